"""tasksim_ray: which tasks to pretrain on, measured from task-model representations, on Ray."""

__version__ = "0.2.0"
