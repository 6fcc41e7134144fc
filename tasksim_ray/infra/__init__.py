"""Infrastructure every layer above uses: the content-addressed artifact cache, the shared store,
the Ray runtime, metrics, terminal progress, figures and cluster job submission."""
