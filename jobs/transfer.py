"""Job entry point: the whole transfer design, `tasksim study CONFIG [options]`, on the cluster."""

from _entry import run

if __name__ == "__main__":
    run("study")
