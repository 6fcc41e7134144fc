"""Job entry point: the whole pipeline, `tasksim run CONFIG [options]`, on the cluster.

    RAY_AUTH_MODE=token ray job submit --working-dir . -- python jobs/run_pipeline.py configs/demo.yaml

or `tasksim submit configs/demo.yaml --address http://HEAD:8265`. Inside a submitted job
RAY_ADDRESS is set, so the library joins the cluster instead of starting a local Ray.
"""

from _entry import run

if __name__ == "__main__":
    run("run")
