"""tasksim_ray: which tasks to pretrain on, measured from task-model representations, on Ray."""

__version__ = "0.2.0"  # part of model cache keys: bump when training or model code changes
