"""Entry point for `ray job submit`: run the whole pipeline from a config on the cluster.

    RAY_AUTH_MODE=token ray job submit --working-dir . -- python jobs/run_pipeline.py configs/demo.yaml

Inside a submitted job RAY_ADDRESS is set, so the library joins the cluster instead of
starting a local Ray.
"""

import sys

from tasksim_ray.cli import app

if __name__ == "__main__":
    app(["run", *sys.argv[1:]])
