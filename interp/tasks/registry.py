"""Task names for the CLI: `get_task("greater-than")` -> a `Task` instance.

Tasks living in other modules are imported inside their factory, so one missing or broken
module never breaks the others.

Example:
    >>> task = get_task("induction")
    >>> batch = task.build(model, n_prompts=40, seed=0)
"""

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from interp.errors import UserError, UserValueError
from interp.tasks.base import Task, check_task


def _lazy(*candidates: str) -> Callable[[], Task]:
    """A factory importing the first of "module:Class" that exists."""
    def factory() -> Task:
        errors = []
        for spec in candidates:
            module, cls = spec.split(":")
            try:
                return getattr(importlib.import_module(module), cls)()
            except (ImportError, AttributeError) as err:
                errors.append(f"{spec} ({err})")
        raise UserValueError("task not available: " + "; ".join(errors))
    return factory


TASKS: dict[str, Callable[[], Task]] = {
    "ioi": _lazy("interp.ioi.dataset:IOITask"),
    "greater-than": _lazy("interp.tasks.greater_than:GreaterThanTask"),
    "induction": _lazy("interp.tasks.induction:InductionTask"),
    "capitals": _lazy("interp.capitals:CapitalTask"),
}


def task_names() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> Task:
    """The task registered as `name`, or your own given as "path/to/file.py:Class" or
    "package.module:Class"; ValueError listing the valid names otherwise."""
    if name in TASKS:
        return TASKS[name]()
    if ":" in name:
        return _from_path(name)
    raise UserValueError(f"unknown task '{name}'; valid tasks: {', '.join(task_names())}, "
                     "or your own as path/to/file.py:ClassName")


def _from_path(spec: str) -> Task:
    target, cls = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if not path.exists():
            raise UserError(f"task file {path} does not exist; pass path/to/file.py:ClassName")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    if not hasattr(module, cls):
        raise UserValueError(f"{target} defines no '{cls}'")
    task = getattr(module, cls)()
    check_task(task, spec)
    return task


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Add a task under `name` (e.g. your own: README, "Test your own hypothesis")."""
    TASKS[name] = factory
