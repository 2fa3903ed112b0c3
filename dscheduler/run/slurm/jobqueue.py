"""dask_jobqueue's SLURM classes, imported without the SIGINT handler it sets.

Every dscheduler module that needs dask_jobqueue imports it from here, so the
guard below runs first, whichever module loads first.
"""

from __future__ import annotations

import signal
import sys
from typing import Any


def _import_dask_jobqueue() -> None:
    """Import dask_jobqueue without the SIGINT handler it sets.

    dask-jobqueue 0.9.0 sets SIGINT to ``sys.exit`` as it is imported, for its
    runners, which dscheduler does not use (its issues #667 and #696; moved
    into the runners after 0.9.0).  So Ctrl-C in a driver raised SystemExit
    instead of KeyboardInterrupt, and importing dscheduler anywhere but in the
    main thread (a plain Dask task, a thread pool) failed with "signal only
    works in main thread".  Hand-written because no release has the fix.
    """
    if "dask_jobqueue" in sys.modules:
        return
    real = signal.signal

    def keep_sigint(signum: Any, handler: Any) -> Any:
        if signum == signal.SIGINT:
            return signal.getsignal(signum)
        return real(signum, handler)

    signal.signal = keep_sigint  # type: ignore[assignment]
    try:
        import dask_jobqueue  # noqa: F401
    finally:
        signal.signal = real


_import_dask_jobqueue()

from dask_jobqueue import SLURMCluster  # noqa: E402
from dask_jobqueue.slurm import SLURMJob  # noqa: E402

__all__ = ["SLURMCluster", "SLURMJob"]
