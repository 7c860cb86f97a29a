"""Tasks: behaviours with clean/corrupted prompts and a metric (IOI, capitals, ...)."""

from interp.tasks.base import Metric, Task, TaskBatch, group_ids, normalise

__all__ = ["Metric", "Task", "TaskBatch", "group_ids", "normalise"]
