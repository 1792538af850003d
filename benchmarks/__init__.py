"""karras_jax benchmark suite: scripts, not tests. Entry point: ``python benchmarks/run.py``."""
