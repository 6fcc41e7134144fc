"""The transfer studies, one module each; ``tasksim_ray.registry.STUDIES`` names them. A new study
is a :class:`tasksim_ray.transfer.study.Study` subclass in a new module and one registry line."""
