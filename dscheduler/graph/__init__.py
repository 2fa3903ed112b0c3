"""Run graphs: RunConfigs, tasks and nodes with content-hash keys, plans,
experiment files and recipes (docs/design.md §2, §4, §5.1).

Imports :mod:`dscheduler.envs`, :mod:`dscheduler.store` and the top-level
modules, nothing above.
"""

from __future__ import annotations

from .experiment import Experiment, load_experiment
from .node import Node
from .plan import Plan, plan
from .runconfig import RunConfig
from .task import Task, task

__all__ = ["Experiment", "Node", "Plan", "RunConfig", "Task", "load_experiment", "plan",
           "task"]
