"""Generation at scale: seed sets to sharded, checksummed, resumable files (``karras-jax generate``)."""

from karras_jax.generation.features import STATS, stats_of
from karras_jax.generation.job import MANIFEST, GenerateResult, generate, verify
from karras_jax.generation.models import GenerateModel, load_generate_model
from karras_jax.generation.seeds import MAX_SEED, SeedRuns, parse_seeds, seed_keys, seed_runs
from karras_jax.generation.stats import FeatureStats, frechet_distance

__all__ = [
    "MANIFEST",
    "MAX_SEED",
    "STATS",
    "FeatureStats",
    "GenerateModel",
    "GenerateResult",
    "SeedRuns",
    "frechet_distance",
    "generate",
    "load_generate_model",
    "parse_seeds",
    "seed_keys",
    "seed_runs",
    "stats_of",
    "verify",
]
