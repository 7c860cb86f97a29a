"""Tasks: behaviours with clean/corrupted prompts and a metric (IOI, capitals, ...)."""

from interp.tasks.base import Metric, Task, TaskBatch, UnembedMetric, group_ids

__all__ = ["Metric", "Task", "TaskBatch", "UnembedMetric", "group_ids"]
