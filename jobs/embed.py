"""Job entry point: `tasksim embed CONFIG [options]` on the cluster (see tasksim_ray/submit.py)."""

from _entry import run

if __name__ == "__main__":
    run("embed")
