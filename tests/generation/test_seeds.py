"""Seed sets in EDM's syntax, and seed s -> jax.random.key(s)."""

import jax
import numpy as np
import pytest

import karras_jax as kj
from karras_jax.generation.seeds import seed_runs


def test_edm_syntax_ranges_are_inclusive_and_sorted():
    assert kj.parse_seeds("0-4").tolist() == [0, 1, 2, 3, 4]
    assert kj.parse_seeds("10-12, 0,5").tolist() == [0, 5, 10, 11, 12]
    assert kj.parse_seeds("7").dtype == np.int64
    assert kj.parse_seeds(f"{kj.MAX_SEED}").tolist() == [2**32 - 1]


@pytest.mark.parametrize("text, match", [("", "non-empty"), ("1-", "not a seed"), ("a", "not a seed"),
                                         ("5-2", "reversed"), ("-1", "not a seed"), ("4294967296", "0 .."),
                                         ("0-3,2", "more than once")])
def test_malformed_seed_sets_are_named(text, match):
    with pytest.raises(ValueError, match=match):
        kj.parse_seeds(text)


def test_seed_s_is_sampled_from_jax_random_key_s():
    keys = kj.seed_keys(np.asarray([0, 7, 2**32 - 1]))
    for key, seed in zip(keys, [0, 7, 2**32 - 1], strict=True):
        np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(seed)))


def test_a_seed_set_is_held_as_runs_whatever_its_length():
    runs = seed_runs("0-4294967295")
    assert len(runs) == 2**32 and runs.starts.nbytes + runs.offsets.nbytes < 100
    assert runs.take(2**32 - 2, 2**32 + 5).tolist() == [2**32 - 2, 2**32 - 1]  # clipped to the set
    mixed = seed_runs("20-22, 0,5, 6, 23")  # adjacent items merge into one run
    assert str(mixed) == "0,5-6,20-23" and len(mixed) == 7
    assert mixed.take(2, 5).tolist() == [6, 20, 21]
    assert mixed == seed_runs(np.asarray([23, 0, 6, 5, 22, 21, 20]))  # a list: the same set


@pytest.mark.parametrize("seeds, match", [("0-10,3-4", "3 is given more than once"),
                                          (np.asarray([1, 2, 2]), "2 is given more than once"),
                                          (np.asarray([[1]]), "1-D"), (np.asarray([-1]), "0 ..")])
def test_overlapping_runs_and_bad_lists_are_named(seeds, match):
    with pytest.raises(ValueError, match=match):
        seed_runs(seeds)
