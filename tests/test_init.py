"""Named initializers: distributions against their formulas, Equinox's default, jit and vmap."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neurosurgery._init import (
    fan_in_and_out,
    kaiming_normal,
    lecun_normal,
    orthogonal,
    uniform_fan_in,
    xavier_uniform,
)

# On 512 × 512 = 262,144 draws the sample std has a relative standard error of about 0.14 %, so
# 2 % is far outside chance yet catches a wrong fan (a factor of sqrt(2) or more).
STD_RTOL = 0.02


def _check_moments(x: np.ndarray, std: float) -> None:
    x = np.asarray(x, np.float64)
    assert abs(x.mean()) < 5 * std / math.sqrt(x.size)
    np.testing.assert_allclose(x.std(), std, rtol=STD_RTOL)


def test_fans_follow_equinox_layout():
    assert fan_in_and_out((256, 512)) == (512, 256)
    # Conv (out, in, kh, kw): the receptive field multiplies both fans.
    assert fan_in_and_out((8, 4, 3, 3)) == (36, 72)
    # A Flax-style kernel (in, out) and a multi-axis input.
    assert fan_in_and_out((512, 256), fan_in_axes=0, fan_out_axes=1) == (512, 256)
    assert fan_in_and_out((6, 2, 5), fan_in_axes=(1, 2), fan_out_axes=0) == (10, 6)
    assert fan_in_and_out((6, 2, 5), fan_in_axes=(-1,), fan_out_axes=(0,)) == (10, 12)


def test_fans_reject_missing_or_overlapping_axes():
    with pytest.raises(ValueError, match=r"fan_in_axes=\(1,\) does not fit shape \(5,\).*fan_in="):
        fan_in_and_out((5,))
    with pytest.raises(ValueError, match="overlap"):
        fan_in_and_out((4, 4), fan_in_axes=0, fan_out_axes=0)


def test_lecun_normal(getkey):
    w = lecun_normal()(getkey(), (512, 512))
    assert w.shape == (512, 512) and w.dtype == jnp.float32
    _check_moments(w, 1 / math.sqrt(512))


def test_kaiming_normal(getkey):
    w = kaiming_normal()(getkey(), (512, 512))
    _check_moments(w, math.sqrt(2 / 512))
    # Conv layout: fan_in = in · kh · kw = 32 · 3 · 3.
    w = kaiming_normal()(getkey(), (512, 32, 3, 3))
    _check_moments(w, math.sqrt(2 / (32 * 9)))


def test_xavier_uniform(getkey):
    w = np.asarray(xavier_uniform()(getkey(), (256, 1024)))
    bound = math.sqrt(6 / (1024 + 256))
    assert w.min() >= -bound and w.max() <= bound
    assert w.min() < -0.99 * bound and w.max() > 0.99 * bound
    _check_moments(w, bound / math.sqrt(3))


def test_uniform_fan_in_is_equinox_default(getkey):
    key = getkey()
    layer = eqx.nn.Linear(48, 24, key=key)
    wkey, bkey = jax.random.split(key)  # how Equinox splits its key (equinox/nn/_linear.py)
    init = uniform_fan_in()
    np.testing.assert_array_equal(init(wkey, (24, 48)), layer.weight)
    np.testing.assert_array_equal(init(bkey, (24,), fan_in=48), layer.bias)
    conv = eqx.nn.Conv2d(4, 8, 3, key=key)
    np.testing.assert_array_equal(init(wkey, (8, 4, 3, 3)), conv.weight)
    np.testing.assert_array_equal(init(bkey, (8, 1, 1), fan_in=36), conv.bias)


def test_uniform_fan_in_distribution(getkey):
    w = np.asarray(uniform_fan_in()(getkey(), (512, 512)))
    bound = 1 / math.sqrt(512)
    assert w.min() >= -bound and w.max() <= bound and w.max() > 0.99 * bound
    _check_moments(w, bound / math.sqrt(3))


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (32, 32)])
@pytest.mark.parametrize("scale", [1.0, math.sqrt(2)])
def test_orthogonal_matrices(getkey, shape, scale):
    w = np.asarray(orthogonal(scale)(getkey(), shape), np.float64)
    small = min(shape)
    gram = w @ w.T if shape[0] <= shape[1] else w.T @ w
    np.testing.assert_allclose(gram, scale**2 * np.eye(small), atol=1e-5)


def test_orthogonal_conv_rows_are_orthonormal(getkey):
    w = np.asarray(orthogonal(2.0)(getkey(), (8, 4, 3, 3)), np.float64)
    rows = w.reshape(8, 36)
    np.testing.assert_allclose(rows @ rows.T, 4.0 * np.eye(8), atol=1e-5)
    # Units along another axis (a Flax-style (in, out) kernel): columns orthonormal.
    k = np.asarray(orthogonal()(getkey(), (24, 6), fan_out_axes=1), np.float64)
    np.testing.assert_allclose(k.T @ k, np.eye(6), atol=1e-5)


def test_orthogonal_is_not_sign_biased(getkey):
    # Without the sign fix, QR's convention makes diagonal entries of Q systematically signed.
    keys = jax.random.split(getkey(), 64)
    diag = jax.jit(jax.vmap(lambda k: jnp.diagonal(orthogonal()(k, (4, 4)))))(keys)
    assert abs(float(jnp.mean(jnp.sign(diag)))) < 0.3


def test_orthogonal_needs_a_matrix(getkey):
    with pytest.raises(ValueError, match="at least 2 axes"):
        orthogonal()(getkey(), (8,))


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_scale_rejected(scale):
    with pytest.raises(ValueError, match=r"scale=.*> 0"):
        lecun_normal(scale)
    with pytest.raises(ValueError, match=r"scale=.*> 0"):
        orthogonal(scale)


def test_bias_without_fan_is_rejected(getkey):
    with pytest.raises(ValueError, match="fan_in="):
        lecun_normal()(getkey(), (16,))


INITS = [lecun_normal(), kaiming_normal(), xavier_uniform(), uniform_fan_in(), orthogonal()]


def test_jit_vmap_and_dtypes(getkey):
    keys = jax.random.split(getkey(), 3)

    @jax.jit
    def draw(keys):
        batched = [jax.vmap(lambda k, init=init: init(k, (6, 10)))(keys) for init in INITS]
        one_by_one = [jnp.stack([init(k, (6, 10)) for k in keys]) for init in INITS]
        return batched, one_by_one

    for init, batched, one_by_one in zip(INITS, *draw(keys), strict=True):
        assert batched.shape == (3, 6, 10)
        np.testing.assert_allclose(batched, one_by_one, rtol=1e-6, atol=1e-7, err_msg=repr(init))
        assert not np.allclose(batched[0], batched[1])
        out = jax.eval_shape(lambda k, init=init: init(k, (6, 10), jnp.bfloat16), keys[0])
        assert out.dtype == jnp.bfloat16 and out.shape == (6, 10)
        # Initializers are hashable values, so they can be static arguments of jit.
        assert hash(init) == hash(type(init)(init.scale))


def test_selected_rows_can_be_redrawn(getkey):
    old = jnp.zeros((5, 3), jnp.float32)
    rows = jnp.array([True, False, True, False, False])
    fresh = kaiming_normal()(getkey(), old.shape)
    new = jnp.where(rows[:, None], fresh, old)
    np.testing.assert_array_equal(new[~rows], 0.0)
    np.testing.assert_array_equal(new[rows], fresh[rows])


def test_scale_multiplies_every_draw_exactly(getkey):
    # Powers of two scale floats exactly, so the same key gives exactly scale × the unit draw.
    key = getkey()
    for factory in (lecun_normal, kaiming_normal, xavier_uniform, uniform_fan_in, orthogonal):
        unit = factory()(key, (6, 10))
        np.testing.assert_array_equal(factory(2.0)(key, (6, 10)), 2.0 * unit)
        np.testing.assert_array_equal(factory(0.5)(key, (6, 10)), 0.5 * unit)


def test_explicit_fans_for_a_bias(getkey):
    key = getkey()
    # A bias drawn with its layer's fans: LeCun std 1/sqrt(64), Xavier bound sqrt(6 / (64 + 16)).
    np.testing.assert_allclose(
        lecun_normal()(key, (16,), fan_in=64), jax.random.normal(key, (16,)) / 8.0, rtol=1e-6
    )
    bias = np.asarray(xavier_uniform()(key, (4096,), fan_in=64, fan_out=16))
    bound = math.sqrt(6 / 80)
    assert bias.min() >= -bound and bias.max() <= bound and bias.max() > 0.99 * bound
    with pytest.raises(ValueError, match="fan_in="):
        xavier_uniform()(key, (16,), fan_in=64)  # Xavier needs the fan-out as well
