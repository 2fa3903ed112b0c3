"""A Dask preload that ends a process whose parent (the driver) is gone.

The embedded local cluster's workers are processes of their own
(:mod:`dscheduler.run.clusters`), started by the driver.  Loaded into each
worker's nanny (``preload_nanny``), this watches the nanny's parent pid: when
the driver dies, even by kill -9, the nanny exits, and its worker process
with it (distributed ends a worker whose nanny is gone).  Nothing is left
running behind a killed driver.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

POLL = 0.5


def _watch(parent: int) -> None:
    while True:
        time.sleep(POLL)
        if os.getppid() != parent:
            os._exit(3)  # reparented: the driver died; no cleanup can reach it any more


def dask_setup(service: Any) -> None:
    """Called by distributed when the nanny starts."""
    threading.Thread(target=_watch, args=(os.getppid(),), name="dscheduler-watchdog",
                     daemon=True).start()
