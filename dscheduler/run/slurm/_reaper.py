"""Cancel a SLURM cluster's jobs once the process that owns them is gone (docs/design.md §13.6).

::

    python -I _reaper.py LEDGER OWNER_PID

Started by :class:`dscheduler.run.slurm.ledger.Ledger` in a session of its own, so a kill -9 of
the owner or its process group leaves it running.  Every ``POLL`` seconds: if the ledger file is
gone (the cluster closed), it exits; if the owner is gone (the same process: start time in
``/proc/PID/stat``), it runs ``scancel`` on every job id in the ledger and every job of the user
named like the cluster's jobs, pending ones included, removes the ledger and exits.  Standard
library only.  The ledger is data anyone who can write the store can edit (§15): only job ids
(digits, ``_`` and ``.`` parts) and job names shaped like dscheduler's reach ``scancel``; the
rest is left out and named by :func:`refused`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import subprocess
import sys
import time

POLL = 0.5

#: A SLURM job id: ``1234``, an array task ``1234_7``, a step ``1234.0``.
JOB_ID = re.compile(r"[0-9]+(?:[_.][0-9]+)*")
#: The names dscheduler gives a cluster's jobs: ``{job_name}-{kind}-{cluster id}``
#: (``slurm.job_name``'s pattern, a kind, the cluster's hex digits).
JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}-[a-z]+-[0-9a-f]+")


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks); None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _listed(data: dict[str, object], field: str) -> list[str]:
    value = data.get(field)
    return [str(item) for item in value] if isinstance(value, dict | list) else []


def valid_jobs(data: dict[str, object]) -> list[str]:
    """The job ids of a job file that are SLURM job ids."""
    return [job for job in _listed(data, "jobs") if JOB_ID.fullmatch(job)]


def valid_names(data: dict[str, object]) -> list[str]:
    """The job names of a job file that are shaped like dscheduler's."""
    return [name for name in _listed(data, "names") if JOB_NAME.fullmatch(name)]


def refused(data: dict[str, object]) -> list[str]:
    """The job ids and names of a job file that no command is given, quoted."""
    return [f"job id {job!r}" for job in _listed(data, "jobs") if not JOB_ID.fullmatch(job)] \
        + [f"job name {name!r}" for name in _listed(data, "names")
           if not JOB_NAME.fullmatch(name)]


def scancel_commands(data: dict[str, object], user: str) -> list[list[str]]:
    """The scancel commands that end every job of a ledger's cluster: its valid job ids
    and names only (:func:`refused` lists the rest)."""
    jobs, names = valid_jobs(data), valid_names(data)
    commands = [["scancel", *jobs]] if jobs else []
    commands += [["scancel", f"--user={user}", f"--name={name}"] for name in names]
    return commands


def _cancel(ledger: str) -> None:
    try:
        with open(ledger) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return
    for cmd in scancel_commands(data, pwd.getpwuid(os.getuid()).pw_name):
        subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)


def main(argv: list[str]) -> int:
    ledger, owner = argv[1], int(argv[2])
    started = _start_time(owner)
    while os.path.exists(ledger):
        if started is None or _start_time(owner) != started:
            _cancel(ledger)
            # Gone only now: a reader never sees the ledger without its jobs cancelled.
            with contextlib.suppress(OSError):
                os.remove(ledger)
            return 0
        time.sleep(POLL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
