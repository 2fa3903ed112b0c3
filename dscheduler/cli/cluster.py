"""``dscheduler cluster up|down``: a long-lived SLURM scheduler for a store.

``up`` starts it in a process of its own and records its address in the
store (``slurm/cluster.json``); notebooks use it with ``ds.connect(store)``,
the CLI with ``--cluster store``.  ``down`` stops it and cancels its jobs.
Its scheduler listens where its workers can reach it, over TLS with
credentials only the user who started it can read (docs/design.md §15).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
import yaml

from ..errors import ConfigError, DSchedulerError
from ..run import security
from ..run.slurm import detached
from ..store import Store
from .common import StoreOption, fail, say

app = typer.Typer(no_args_is_help=True,
                  help="Start or stop a long-lived SLURM scheduler for a store.")

OptionList = Annotated[
    list[str] | None,
    typer.Option("--option", "-o", help="a dscheduler.slurm option as KEY=VALUE (a YAML "
                 "value), repeatable: -o max_jobs=8 -o walltime=04:00:00 -o gpu.max_jobs=2"),
]


def parse_options(items: list[str]) -> dict[str, Any]:
    """``["max_jobs=8", "gpu.gpus=2"]`` -> ``{"max_jobs": "8", "gpu": {"gpus": "2"}}``.

    Values stay text (the options' types convert them when validated), except
    YAML lists and mappings (``directives=[--qos=short]``) and an empty value
    (None): YAML would read ``walltime=1:00:00`` as the number 3600.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"option {item!r} is not KEY=VALUE (e.g. -o max_jobs=8)")
        text = text.strip()
        value: Any = yaml.safe_load(text) if text[:1] in ("[", "{") else (text or None)
        *parents, last = key.strip().split(".")
        where = out
        for parent in parents:
            where = where.setdefault(parent, {})
            if not isinstance(where, dict):
                raise ConfigError(f"option {item!r}: {parent} is not a group of options")
        where[last] = value
    return out


def up(store: StoreOption = None, option: OptionList = None) -> None:
    """Start a SLURM scheduler for the store, in the background, and record its address."""
    st = Store(store)
    try:
        record = detached.up(st, **parse_options(option or []))
    except DSchedulerError as err:
        fail(err)
    say(f"SLURM cluster {record['cluster']} up at {record['address']} "
        f"(pid {record['pid']} on {record['host']}); dashboard {record['dashboard']}")
    if str(record["address"]).startswith("tls://"):
        say(f"TLS: only you can connect (its credentials are in "
            f"{security.cluster_dir(str(record['cluster']))})")
    else:
        say("warning: plain TCP (dscheduler.security.mode is 'tcp'): anyone who reaches "
            f"{record['address']} runs code as you")
    say(f"use it with ds.connect({str(st.root)!r}) or `--cluster store`; "
        f"stop it with `dscheduler cluster down --store {st.root}`; log {st.slurm_scheduler_log}")


def down(store: StoreOption = None) -> None:
    """Stop the store's SLURM scheduler and cancel its jobs (and those of dead drivers)."""
    st = Store(store)
    try:
        result = detached.down(st)
    except DSchedulerError as err:
        fail(err)
    jobs = ", ".join(result["cancelled"]) or "none left"
    if result["cluster"] is None:
        say(f"no SLURM cluster was up for {st.root}; jobs cancelled: {jobs}")
    elif result.get("gone"):
        say(f"SLURM cluster {result['cluster']} had stopped already (its process is gone); "
            f"jobs cancelled here: {jobs}")
    else:
        say(f"stopped SLURM cluster {result['cluster']}; jobs cancelled here: {jobs}")


app.command()(up)
app.command()(down)
