"""The FID Inception network against pytorch-fid's own module, and its refusals.

The reference is pytorch-fid's ``InceptionV3([3], resize_input=True, normalize_input=True)``
built by its own ``fid_inception_v3`` (torchvision's ``Inception3`` with pytorch-fid's patched
blocks) holding random weights with non-trivial BatchNorm statistics (``tests/fid_reference.py``;
the published weights are never downloaded). The cross-checks skip, naming what is missing,
without torch, torchvision or pytorch-fid; the refusal tests need none of them.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fid_reference import fid_module, inception, random_state_dict

from karras_jax.models.inception import (
    _CONVS,
    _LEAVES,
    INCEPTION_DIM,
    _resize_axis,
    _shape,
    inception_features,
    inception_params_from_torch,
)

RTOL = 1e-4


def numpy_state_dict() -> dict[str, np.ndarray]:
    """A torch-free state dict with the published file's names and shapes (random values; a new
    dict each call, the arrays shared: replace entries, never write into them)."""
    return dict(_numpy_state_dict())


@functools.cache
def _numpy_state_dict() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {f"{path}.{suffix}": rng.uniform(0.5, 1.5, _shape(conv, leaf, torch=True)).astype(np.float32)
           for path, conv in _CONVS.items() for suffix, leaf in _LEAVES.items()}
    out["fc.weight"], out["fc.bias"] = np.zeros((1008, 2048), np.float32), np.zeros(1008, np.float32)
    return out


@functools.cache
def _numpy_params():
    return inception_params_from_torch(numpy_state_dict())


@pytest.fixture(scope="module")
def reference():
    """(torch state dict, pytorch-fid's module holding it)."""
    inception()  # skips, naming what is missing, before torch is imported
    state_dict = random_state_dict(0)
    return state_dict, fid_module(state_dict)


@pytest.mark.parametrize(("size", "dtype"), [(299, np.uint8), (32, np.float32)])
def test_features_match_pytorch_fid(reference, size, dtype):
    import torch

    state_dict, net = reference
    images = np.random.default_rng(size).integers(0, 256, (4, size, size, 3)).astype(np.uint8)
    with torch.no_grad():
        x = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2)  # NCHW on [0, 1]
        (expected,) = net(x)
    expected = expected.reshape(4, -1).numpy()
    got = inception_features(inception_params_from_torch(state_dict), images.astype(dtype))
    assert got.shape == (4, INCEPTION_DIM) and got.dtype == jnp.float32
    scale = np.abs(expected).max()
    assert scale > 1.0 and (expected > 0).mean() > 0.5  # features that carry the weights' signal
    np.testing.assert_allclose(np.asarray(got), expected, rtol=RTOL, atol=RTOL * scale)


@pytest.mark.parametrize(("height", "width"), [(32, 48), (512, 300), (299, 7), (1, 600)])
def test_resize_is_pytorch_bilinear_without_antialiasing(height, width):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).random((2, height, width, 3), np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299),
                                               mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    got = _resize_axis(_resize_axis(jnp.asarray(x), 2, 299), 1, 299)
    np.testing.assert_allclose(np.asarray(got), expected.numpy(), rtol=1e-6, atol=1e-6)


def test_accepts_pytorch_fid_module_names(reference):
    state_dict, net = reference
    module_dict = net.state_dict()
    assert "blocks.0.0.conv.weight" in module_dict
    ours = inception_params_from_torch(module_dict)
    published = inception_params_from_torch(state_dict)
    assert jax.tree.structure(ours) == jax.tree.structure(published)
    jax.tree.map(np.testing.assert_array_equal, ours, published)


def test_conversion_layout():
    state_dict = numpy_state_dict()
    params = inception_params_from_torch(state_dict)
    kernel = state_dict["Mixed_6b.branch7x7_2.conv.weight"]  # (out, in, 1, 7)
    np.testing.assert_array_equal(params["Mixed_6b"]["branch7x7_2"]["kernel"], kernel.transpose(2, 3, 1, 0))
    bn = params["Conv2d_1a_3x3"]
    names = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    for leaf, suffix in names.items():
        np.testing.assert_array_equal(bn[leaf], state_dict[f"Conv2d_1a_3x3.bn.{suffix}"])
    assert len(jax.tree.leaves(params)) == 5 * len(_CONVS) == 5 * 94  # fc ignored, nothing folded
    assert "fc" not in params


def test_features_shape_under_jit_and_eval_shape():
    params = _numpy_params()
    cases = (((3, 299, 299, 3), jnp.uint8), ((2, 17, 40, 3), jnp.float32), ((1, 8, 8, 3), jnp.int32))
    for shape, dtype in cases:
        out = jax.eval_shape(inception_features, params, jax.ShapeDtypeStruct(shape, dtype))
        assert out.shape == (shape[0], INCEPTION_DIM) and out.dtype == jnp.float32


def test_refuses_missing_unexpected_and_misshapen_tensors():
    state_dict = numpy_state_dict()
    del state_dict["Mixed_6b.branch7x7_2.bn.running_var"]
    with pytest.raises(ValueError, match=r"missing 1: Mixed_6b\.branch7x7_2\.bn\.running_var"):
        inception_params_from_torch(state_dict)
    state_dict = numpy_state_dict()
    state_dict["AuxLogits.conv0.conv.weight"] = np.zeros((128, 768, 1, 1), np.float32)
    with pytest.raises(ValueError, match=r"unexpected 1: AuxLogits\.conv0\.conv\.weight"):
        inception_params_from_torch(state_dict)
    state_dict = numpy_state_dict()
    state_dict["Mixed_5b.branch_pool.conv.weight"] = np.zeros((32, 192, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"wrong shape: Mixed_5b\.branch_pool\.conv\.weight "
                                         r"\(32, 192, 3, 3\) \(expected \(32, 192, 1, 1\)\)"):
        inception_params_from_torch(state_dict)
    state_dict = {f"blocks.{key}": value for key, value in numpy_state_dict().items()}
    with pytest.raises(ValueError, match="pytorch-fid InceptionV3 module names"):
        inception_params_from_torch(state_dict)
    state_dict = numpy_state_dict()
    state_dict["Conv2d_1a_3x3.bn.weight"] = np.array(["a"] * 32)
    with pytest.raises(TypeError, match=r"state_dict\['Conv2d_1a_3x3\.bn\.weight'\]"):
        inception_params_from_torch(state_dict)
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        inception_params_from_torch([("Conv2d_1a_3x3.conv.weight", np.zeros((32, 3, 3, 3)))])


@pytest.mark.parametrize(("images", "error", "match"), [
    (np.zeros((299, 299, 3), np.uint8), ValueError, r"images must be \(B, H, W, 3\).*\(299, 299, 3\)"),
    (np.zeros((2, 32, 32, 1), np.uint8), ValueError, r"images must be \(B, H, W, 3\).*grayscale"),
    (np.zeros((2, 32, 32, 4), np.float32), ValueError, r"images must be \(B, H, W, 3\)"),
    (np.zeros((2, 3, 32, 32), np.float32), ValueError, r"images must be \(B, H, W, 3\) RGB images, NHWC"),
    (np.zeros((2, 0, 32, 3), np.float32), ValueError, "images must have a positive height"),
    (np.zeros((2, 32, 32, 3), bool), TypeError, "images must hold real numbers"),
    (np.zeros((2, 32, 32, 3), np.complex64), TypeError, "images must hold real numbers"),
    (np.full((2, 32, 32, 3), "x"), TypeError, "images must hold real numbers"),
    ("not an image", TypeError, "images must hold real numbers"),
])
def test_refuses_bad_images(images, error, match):
    params = _numpy_params()
    with pytest.raises(error, match=match):
        inception_features(params, images)


def test_refuses_params_of_another_network():
    params = inception_params_from_torch(numpy_state_dict())
    params["Mixed_7c"]["branch_pool"]["kernel"] = jnp.zeros((1, 1, 2048, 10))
    with pytest.raises(ValueError, match=r"params is not an FID Inception pytree.*"
                                         r"Mixed_7c\.branch_pool\.kernel \(1, 1, 2048, 10\) "
                                         r"\(expected \(1, 1, 2048, 192\)\)"):
        inception_features(params, np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"params is not .*Conv2d_1a_3x3\.kernel missing"):
        inception_features({}, np.zeros((1, 32, 32, 3), np.uint8))
