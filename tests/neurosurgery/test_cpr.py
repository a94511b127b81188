"""Calibrated partial resets: the new weights and optimizer state against numpy for given
scores and keys, the default score's running average, jit and vmap over seeds, bad options."""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neurosurgery as ns

RHO, SHARP, C, DECAY = 0.5, 16.0, 1.0, 0.9


def make(key):
    return eqx.nn.MLP(3, 1, 4, 2, activation=jax.nn.tanh, key=key)


def sq_loss(out):
    return jnp.sum(out**2)


class Given:
    """A metric whose scores are given, one dict per call (in call order)."""

    name = "given"

    def __init__(self, scores):
        self.scores = scores

    def init(self, anatomy):
        return ns.EmptyState()

    def score(self, anatomy, observation, state):
        return {k: jnp.asarray(v, jnp.float32) for k, v in self.scores.items()}, state


S1 = {"layers[0]": [0.2, 0.95, 1.05, 1.6], "layers[1]": [1.0, 0.0, 1.2, 0.8], "layers[2]": [1.0]}
S2 = {"layers[0]": [0.4, 1.0, 1.1, 1.3], "layers[1]": [0.9, 0.3, 1.0, 1.02], "layers[2]": [1.0]}


def _np_gate(avg, gate):
    if gate == "exp":
        return RHO * np.minimum(1.0, np.exp(-SHARP * (avg - C)))
    return RHO * np.minimum(1.0, 2.0 / (1.0 + np.exp(SHARP * (avg - C))))


@pytest.mark.parametrize("moments,gate", [("keep", "exp"), ("scale", "sigmoid")])
def test_cpr_against_numpy(moments, gate):
    """Two calls (updates (0, 2] and (2, 4]; due at 4) with given scores: the running scores,
    the fractions, the moved incoming and decayed outgoing weights (fresh ones from `make` with
    the step's key), the kept biases, and the optimizer state as documented."""
    model = make(jax.random.key(0))
    anatomy = ns.anatomy(model, jnp.zeros(3))
    optimizer = optax.adam(1e-2)
    params = eqx.filter(model, eqx.is_array)
    grads = jax.tree.map(
        lambda p: jnp.sin(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape), params
    )
    with jax.numpy_dtype_promotion("standard"):
        _, opt_state = optimizer.update(grads, optimizer.init(params), params)  # nonzero moments
    x = jnp.zeros((2, 3))
    _, obs = ns.observe(anatomy, model, sq_loss, x)
    key = jax.random.key(7)

    def call(scores, model, state, step, since, opt_state):
        cpr = ns.CPR(
            RHO,
            SHARP,
            C,
            DECAY,
            Given(scores),
            ns.Schedule(every=4),
            optimizer_state=moments,
            gate=gate,
        )
        return cpr.step(
            anatomy,
            ns.Operand(
                model, key, step, init=make, optimizer=optimizer, opt_state=opt_state, since=since
            ),
            obs,
            state,
        )

    state = ns.CPR(RHO, SHARP, C, DECAY, Given(S1)).init(anatomy)
    first = call(S1, model, state, 2, 0, opt_state)
    assert float(first.info["moved"]) == 0.0  # not due: nothing moves
    assert eqx.tree_equal(first.model, model)
    second = call(S2, first.model, first.state, 4, 2, first.opt_state)

    keep = DECAY**2
    avg = {k: keep * 1.0 + (1 - keep) * np.asarray(S1[k]) for k in ("layers[0]", "layers[1]")}
    np.testing.assert_allclose(first.state.average["layers[0]"], avg["layers[0]"], rtol=1e-6)
    avg = {k: keep * avg[k] + (1 - keep) * np.asarray(S2[k]) for k in avg}
    f0, f1 = _np_gate(avg["layers[0]"], gate), _np_gate(avg["layers[1]"], gate)
    w = [np.asarray(layer.weight, np.float64) for layer in model.layers]
    b = [np.asarray(layer.bias) for layer in model.layers]
    fresh = make(key)
    fw = [np.asarray(layer.weight, np.float64) for layer in fresh.layers]
    expect0 = (1 - f0)[:, None] * w[0] + f0[:, None] * fw[0]
    expect1 = w[1] * (1 - f0)[None, :]  # decayed as layers[0]'s outgoing weights, then moved
    expect1 = (1 - f1)[:, None] * expect1 + f1[:, None] * fw[1]
    expect2 = w[2] * (1 - f1)[None, :]  # the output layer is never moved, only decayed
    new = second.model
    for got, want in zip(new.layers, (expect0, expect1, expect2), strict=True):
        np.testing.assert_allclose(got.weight, want, rtol=1e-5, atol=1e-7)
    for got, want in zip(new.layers, b, strict=True):
        np.testing.assert_array_equal(got.bias, want)  # biases are kept
    assert float(second.info["moved/layers[0]"]) == pytest.approx(f0.mean(), rel=1e-5)
    assert float(second.info["moved"]) == pytest.approx(np.r_[f0, f1].mean(), rel=1e-5)
    assert float(second.info["score/layers[1]"]) == pytest.approx(avg["layers[1]"].mean(), rel=1e-5)
    for name in ("layers[0]", "layers[1]"):  # running scores start again at 1
        np.testing.assert_array_equal(second.state.average[name], 1.0)
    assert "layers[2]" not in second.state.average
    assert int(second.state.last) == 4

    adam: Any = opt_state[0]  # type: ignore[index]
    new_adam: Any = second.opt_state[0]  # type: ignore[index]
    assert int(new_adam.count) == int(adam.count)
    for moment in ("mu", "nu"):
        old_m = [np.asarray(layer.weight) for layer in getattr(adam, moment).layers]
        got = getattr(new_adam, moment)
        if moments == "keep":
            for g, o in zip(got.layers, old_m, strict=True):
                np.testing.assert_array_equal(g.weight, o)
            continue
        want = (
            old_m[0] * (1 - f0)[:, None],
            old_m[1] * (1 - f0)[None, :] * (1 - f1)[:, None],
            old_m[2] * (1 - f1)[None, :],
        )
        for g, o in zip(got.layers, want, strict=True):
            np.testing.assert_allclose(g.weight, o, rtol=1e-5, atol=1e-12)
        for g, o in zip(got.layers, getattr(adam, moment).layers, strict=True):
            np.testing.assert_array_equal(g.bias, o.bias)


def test_the_gate_at_and_beyond_the_threshold():
    """ρ at or below c; above it ρ · exp(−k (s̄ − c)), 0.5 ρ at s̄ = c + ln 2 / k, or
    ρ · 2σ(−k (s̄ − c)), 0.5 ρ at s̄ = c + ln 3 / k."""
    s = jnp.asarray([0.0, 1.0, 1.0 + math.log(3) / 16, 3.0])
    f = ns.cpr_fraction(s, 0.015, 16.0, 1.0, "sigmoid")
    np.testing.assert_allclose(f, [0.015, 0.015, 0.0075, 0.015 * 2 / (1 + math.exp(32))], rtol=1e-5)
    s = jnp.asarray([0.0, 0.95, 0.95 + math.log(2) / 16, 2.95])
    f = ns.cpr_fraction(s, 0.012, 16.0, 0.95)  # the default gate, exp
    np.testing.assert_allclose(f, [0.012, 0.012, 0.006, 0.012 * math.exp(-32)], rtol=1e-5)
    defaults = ns.strategy("cpr")
    assert isinstance(defaults, ns.CPR)
    assert (defaults.gate, defaults.threshold, defaults.replacement_rate) == ("exp", 0.95, 0.012)


def test_default_score_jit_and_vmap_over_seeds():
    """The preset (GraMa at the weight gradient) under `eqx.filter_jit` and `filter_vmap` over
    seeds: each seed's result equals its unbatched run, and the running score is
    η + (1 − η) G for G the metric's own scores."""
    cpr = ns.strategy("cpr", every=1, decay=0.9)
    anatomy = ns.anatomy(make(jax.random.key(0)), jnp.zeros(3))
    x = jax.random.normal(jax.random.key(1), (8, 3))

    def one(key):
        model = make(key)
        _, obs = ns.observe(anatomy, model, sq_loss, x)
        scores, _ = ns.GraMa("weight").score(anatomy, obs, ns.EmptyState())
        result = cpr.step(anatomy, ns.Operand(model, key, 1, init=make), obs, cpr.init(anatomy))
        return result, scores

    keys = jax.random.split(jax.random.key(2), 2)
    batched, _ = eqx.filter_jit(eqx.filter_vmap(one))(keys)
    for i in range(2):
        alone, s = eqx.filter_jit(one)(keys[i])
        arrays = (eqx.filter(m, eqx.is_array) for m in (alone.model, batched.model))
        for a, b in zip(*map(jax.tree.leaves, arrays), strict=True):
            np.testing.assert_allclose(a, b[i], rtol=1e-6, atol=1e-7)
        running = 0.9 + 0.1 * np.asarray(s["layers[0]"])
        assert float(alone.info["score/layers[0]"]) == pytest.approx(running.mean(), rel=1e-5)
        assert float(batched.info["moved"][i]) > 0
    # the seeds differ, so do their moved weights
    w = batched.model.layers[0].weight
    assert not np.allclose(w[0], w[1])


@pytest.mark.parametrize(
    "options,message",
    [
        ({"replacement_rate": 0.0}, "replacement_rate=0.0 is invalid"),
        ({"replacement_rate": 1.5}, "in (0, 1]"),
        ({"replacement_rate": float("nan")}, "replacement_rate=nan"),
        ({"sharpness": 0.0}, "sharpness=0.0 is invalid"),
        ({"sharpness": float("inf")}, "a finite number > 0"),
        ({"threshold": -1.0}, "threshold=-1.0 is invalid"),
        ({"decay": 1.0}, "decay=1.0 is invalid"),
        ({"optimizer_state": "zero"}, "optimizer_state='zero' is unknown"),
        ({"gate": "tanh"}, "gate='tanh' is unknown"),
    ],
)
def test_bad_options_fail_at_construction(options, message):
    with pytest.raises(ValueError, match=None) as err:
        ns.strategy("cpr", **options)
    assert message in str(err.value)
    assert "CPR" in str(err.value)
