"""Fixed-size padded chunks: every row once, in order, one shape for every chunk."""

import numpy as np
import pytest

from karras_jax._chunks import padded_chunks


@pytest.mark.parametrize("n, size", [(1, 1), (1, 4), (7, 3), (9, 3), (10, 16), (1000, 7)])
def test_chunks_cover_every_row_once_in_order_each_padded_to_size(n, size):
    chunks = list(padded_chunks(n, size))
    assert all(index.shape == (size,) and index.dtype == np.int64 for index, _ in chunks)
    real = np.concatenate([index[:count] for index, count in chunks])
    np.testing.assert_array_equal(real, np.arange(n))
    for index, count in chunks:
        assert np.all(index[count:] == index[0])  # padding repeats the chunk's own first row
    assert [count for _, count in chunks[:-1]] == [size] * (len(chunks) - 1)


@pytest.mark.parametrize("n, size, name", [(0, 2, "n"), (3, 0, "size"), (2.0, 2, "n"), (True, 2, "n")])
def test_bad_counts_are_named(n, size, name):
    with pytest.raises(ValueError, match=f"^{name} must be an int >= 1"):
        list(padded_chunks(n, size))
