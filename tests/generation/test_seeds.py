"""Seed sets in EDM's syntax, and seed s -> jax.random.key(s)."""

import jax
import numpy as np
import pytest

import karras_jax as kj


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
