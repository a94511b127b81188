"""Metric plugins against values computed by hand with numpy."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neurosurgery as ns
from agents.networks import BroNet


def norm(x):
    return x / x.mean(axis=-1, keepdims=True)


def state(metric, anatomy):
    return metric.init(anatomy)


@pytest.fixture(scope="module")
def setup():
    """A 3-8-1 ReLU MLP with two dead units, a batch, and numpy copies of everything."""
    key = jax.random.key(3)
    mlp = eqx.nn.MLP(3, 1, 8, 1, activation=jax.nn.relu, key=key)
    # Units 0 and 1 dead: bias far below any pre-activation on this data.
    mlp = eqx.tree_at(lambda m: m.layers[0].bias, mlp, mlp.layers[0].bias.at[:2].set(-50.0))
    xs = jax.random.normal(jax.random.key(4), (16, 3))
    ts = jax.random.normal(jax.random.key(5), (16, 1))
    anatomy = ns.anatomy(mlp, jnp.zeros(3))
    loss = lambda ys: jnp.mean((ys - ts) ** 2)
    value, obs = ns.observe(anatomy, mlp, loss, xs)
    w1, b1 = np.asarray(mlp.layers[0].weight), np.asarray(mlp.layers[0].bias)
    w2, b2 = np.asarray(mlp.layers[1].weight), np.asarray(mlp.layers[1].bias)
    x, t = np.asarray(xs), np.asarray(ts)
    z = x @ w1.T + b1
    h = np.maximum(z, 0)
    y = h @ w2.T + b2
    dy = 2 * (y - t) / len(x)  # d loss / d y_n, per sample
    grad_h = dy @ w2  # (16, 8)
    grad_z = grad_h * (z > 0)
    grad_w1 = grad_z.T @ x  # batch gradient of the first weight
    np_ = dict(
        x=x,
        z=z,
        h=h,
        y=y,
        grad_h=grad_h,
        grad_z=grad_z,
        grad_w1=grad_w1,
        w1=w1,
        w2=w2,
        loss=float(np.mean((y - t) ** 2)),
    )
    return anatomy, mlp, obs, value, np_


@pytest.mark.newest
def test_observe_loss_and_gradients(setup):
    _, _, obs, value, n = setup
    np.testing.assert_allclose(value, n["loss"], rtol=1e-5)
    np.testing.assert_allclose(
        obs.weight_grads.layers[0].weight, n["grad_w1"], rtol=1e-4, atol=1e-7
    )
    # every record is (batch, positions, units): one position for a dense layer
    pre, post = obs.preactivation_grads, obs.activation_grads
    assert pre is not None and post is not None and pre["layers[0]"].shape == (16, 1, 8)
    np.testing.assert_allclose(pre["layers[0]"][:, 0], n["grad_z"], rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(post["layers[0]"][:, 0], n["grad_h"], rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(obs.activations["layers[0]"][:, 0], n["h"], rtol=1e-5, atol=1e-6)


@pytest.mark.newest
def test_dormant(setup):
    anatomy, _, obs, _, n = setup
    metric = ns.Dormant()
    scores, _ = metric.score(anatomy, obs, metric.init(anatomy))
    np.testing.assert_allclose(scores["layers[0]"], norm(np.abs(n["h"]).mean(0)), rtol=1e-5)
    assert (scores["layers[0]"][:2] == 0).all()


@pytest.mark.newest
def test_grama_sources(setup):
    anatomy, _, obs, _, n = setup
    empty = ns.EmptyState()
    pre, _ = ns.GraMa("preactivation").score(anatomy, obs, empty)
    act, _ = ns.GraMa("activation").score(anatomy, obs, empty)
    weight, _ = ns.GraMa("weight").score(anatomy, obs, empty)
    np.testing.assert_allclose(pre["layers[0]"], norm(np.abs(n["grad_z"]).mean(0)), rtol=1e-4)
    np.testing.assert_allclose(act["layers[0]"], norm(np.abs(n["grad_h"]).mean(0)), rtol=1e-4)
    np.testing.assert_allclose(weight["layers[0]"], norm(np.abs(n["grad_w1"]).mean(1)), rtol=1e-4)
    # The paper's proposition needs the pre-activation: dead ReLU units are GraMa-inactive there,
    # while the gradient after the activation does not see them.
    assert (pre["layers[0]"][:2] == 0).all() and (weight["layers[0]"][:2] == 0).all()
    assert (act["layers[0]"][:2] > 0.01).all()


def test_utility_gradient_activity_weight_magnitude(setup):
    anatomy, _, obs, _, n = setup
    metric = ns.Utility(decay=0.9)
    scores, state = metric.score(anatomy, obs, metric.init(anatomy))
    inst = np.abs(n["h"]).mean(0) * np.abs(n["w2"]).sum(0)
    np.testing.assert_allclose(scores["layers[0]"], norm(inst), rtol=1e-4)
    np.testing.assert_allclose(state.averages["layers[0]"], 0.1 * inst, rtol=1e-4)
    assert (np.asarray(state.ages["layers[0]"]) == 1).all()
    activity, _ = ns.GradientActivity().score(anatomy, obs, ns.EmptyState())
    np.testing.assert_allclose(
        activity["layers[0]"], norm((np.abs(n["grad_z"]) > 0).mean(0)), rtol=1e-5
    )
    mags, _ = ns.WeightMagnitude().score(anatomy, obs, ns.EmptyState())
    np.testing.assert_allclose(mags["layers[0]"], norm(np.abs(n["w1"]).mean(1)), rtol=1e-5)


def test_weight_source_scores_norm_scale_on_its_own(getkey):
    net = BroNet(3, 1, width=6, blocks=1, key=getkey())
    anatomy = ns.anatomy(net, jnp.zeros(3))
    xs = jax.random.normal(getkey(), (8, 3))
    _, obs = ns.observe(anatomy, net, lambda ys: jnp.mean(ys**2), xs)
    scores, _ = ns.GraMa("weight").score(anatomy, obs, ns.EmptyState())
    g = obs.weight_grads
    rows = norm(np.abs(np.asarray(g.blocks[0].dense1.weight)).mean(0))  # stored (in, out)
    gamma = norm(np.abs(np.asarray(g.blocks[0].norm1.weight)))
    np.testing.assert_allclose(scores["blocks[0].dense1"], np.minimum(rows, gamma), rtol=1e-4)


def test_conv_dormant_averages_positions(getkey):
    conv = eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(1, 3, 3, key=getkey()),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Lambda(jnp.ravel),
            eqx.nn.Linear(3 * 3 * 3, 1, key=getkey()),
        ]
    )
    anatomy = ns.anatomy(conv, jnp.zeros((1, 5, 5)))
    xs = jax.random.normal(getkey(), (4, 1, 5, 5))
    _, obs = ns.observe(anatomy, conv, jnp.sum, xs)
    scores, _ = ns.Dormant().score(anatomy, obs, ns.EmptyState())
    h = np.maximum(np.asarray(jax.vmap(conv.layers[0])(xs)), 0)  # (4, 3, 3, 3)
    np.testing.assert_allclose(scores["layers[0]"], norm(h.mean(axis=(0, 2, 3))), rtol=1e-5)
    # the record lays the 3×3 positions of each channel on its own axis
    laid_out = np.asarray(obs.activations["layers[0]"])
    assert laid_out.shape == (4, 9, 3)
    np.testing.assert_allclose(laid_out, h.reshape(4, 3, 9).transpose(0, 2, 1), rtol=1e-6)


def test_twin_critics_normalise_per_member(getkey):
    twin = eqx.filter_vmap(lambda k: eqx.nn.MLP(3, 1, 4, 1, key=k))(jax.random.split(getkey(), 2))
    call = lambda m, x: eqx.filter_vmap(lambda c: c(x))(m)
    anatomy = ns.anatomy(twin, jnp.zeros(3), fn=call)
    xs = jax.random.normal(getkey(), (5, 3))
    _, obs = ns.observe(anatomy, twin, jnp.sum, xs)
    scores, _ = ns.Dormant().score(anatomy, obs, ns.EmptyState())
    assert scores["layers[0]"].shape == (2, 4)
    for m in range(2):
        member = jax.tree_util.tree_map(lambda x, m=m: x[m] if eqx.is_array(x) else x, twin)
        h = np.maximum(
            np.asarray(xs) @ np.asarray(member.layers[0].weight).T
            + np.asarray(member.layers[0].bias),
            0,
        )
        np.testing.assert_allclose(scores["layers[0]"][m], norm(h.mean(0)), rtol=1e-5)


@pytest.mark.newest
def test_metrics_jit_and_vmap_over_seeds(getkey):
    make = lambda k: eqx.nn.MLP(3, 1, 8, 1, key=k)
    anatomy = ns.anatomy(make(getkey()), jnp.zeros(3))
    xs = jax.random.normal(getkey(), (6, 3))

    @jax.jit
    def scores_of(key):
        _, obs = ns.observe(anatomy, make(key), jnp.sum, xs)
        return ns.GraMa().score(anatomy, obs, ns.EmptyState())[0]["layers[0]"]

    keys = jax.random.split(getkey(), 3)
    batched = jax.vmap(scores_of)(keys)
    for i in range(3):
        np.testing.assert_allclose(batched[i], scores_of(keys[i]), rtol=1e-5, atol=1e-7)


def test_compare_reports_ratios_jaccard_and_quadrants(setup):
    anatomy, _, obs, _, n = setup
    scores = ns.score_all(anatomy, [ns.Dormant(), ns.GraMa(), ns.GraMa("activation")], obs)
    result = ns.compare(anatomy, scores, tau=0.0)
    dead = (np.abs(n["h"]).mean(0) == 0).mean()
    assert dead >= 2 / 8  # the two units made dead, maybe more on this data
    assert result.inactive["dormant"]["layers[0]"] == pytest.approx(dead)
    assert result.inactive["grama"]["layers[0]"] == pytest.approx(
        (np.abs(n["grad_z"]).mean(0) == 0).mean()
    )
    assert result.inactive["grama_activation"]["layers[0]"] == 0.0
    assert result.jaccard[("dormant", "grama")]["layers[0]"] == 1.0
    assert result.jaccard[("dormant", "grama_activation")]["layers[0]"] == 0.0
    hh, hl, lh, ll = result.quadrants["layers[0]"]
    assert hh + hl + lh + ll == 8 and hh + hl == 2 and hh + lh == 2  # top 25 % of 8 = 2 units
    act_top = set(np.argsort(-np.abs(n["h"]).mean(0), kind="stable")[:2])
    grad_top = set(np.argsort(-np.abs(n["grad_z"]).mean(0), kind="stable")[:2])
    assert hh == len(act_top & grad_top)
    assert "layers[0]" in result.table() and "network" in result.table()
    # nothing flagged by either metric: no agreement to measure (NaN, "–"), as `inspect` says
    none = ns.compare(anatomy, scores, tau=-1.0)
    assert np.isnan(none.jaccard[("dormant", "grama")]["layers[0]"])
    assert "–" in none.table()
    # bad input is refused by name, never printed as a silent 0.0 %
    with pytest.raises(ValueError, match=r"tau has no threshold for \['grama_activation'\]"):
        ns.compare(anatomy, scores, tau={"dormant": 0.0, "grama": 0.0})
    flat = {**scores, "dormant": {g: v.reshape(-1)[:3] for g, v in scores["dormant"].items()}}
    with pytest.raises(ValueError, match=r"scores\['dormant'\]\['layers\[0\]'\] has shape \(3,\)"):
        ns.compare(anatomy, flat)


def test_bad_metric_options(setup):
    with pytest.raises(ValueError, match="GraMa source 'gradient' is unknown"):
        ns.GraMa("gradient")  # type: ignore[arg-type]
    anatomy, mlp, _, _, _ = setup
    _, no_probes = ns.observe(anatomy, mlp, jnp.sum, jnp.ones((4, 3)), sites=())
    with pytest.raises(ValueError, match="no gradients at the 'preactivation' site"):
        ns.GraMa().score(anatomy, no_probes, ns.EmptyState())
    with pytest.raises(ValueError, match="distinct names"):
        ns.score_all(anatomy, [ns.GraMa(), ns.GraMa()], no_probes)


SCALES = [
    ("mean loss", lambda y, t: jnp.mean((y - t) ** 2), 1),
    ("sum loss", lambda y, t: jnp.sum((y - t) ** 2), 1),
    ("mean loss, batch twice as large", lambda y, t: jnp.mean((y - t) ** 2), 2),
]


@pytest.mark.parametrize("activation", [jax.nn.sigmoid, jax.nn.relu])
def test_scores_do_not_depend_on_the_loss_scale(getkey, activation):
    """A sum or a mean loss, and a batch of another size (the same samples twice), give the same
    normalised scores (up to float32 rounding)."""
    mlp = eqx.nn.MLP(3, 1, 16, 2, activation=activation, key=getkey())
    anatomy = ns.anatomy(mlp, jnp.zeros(3))
    xs = jax.random.normal(getkey(), (32, 3))
    ts = jax.random.normal(getkey(), (32, 1))
    metrics = [ns.GraMa(), ns.GraMa("activation"), ns.GraMa("weight"), ns.Dormant()]
    results = []
    for _, loss, copies in SCALES:
        x, t = jnp.tile(xs, (copies, 1)), jnp.tile(ts, (copies, 1))
        _, obs = ns.observe(anatomy, mlp, lambda y, t=t, loss=loss: loss(y, t), x)
        results.append(ns.score_all(anatomy, metrics, obs))
    for other in results[1:]:
        for name, scores in results[0].items():
            for group, value in scores.items():
                np.testing.assert_allclose(other[name][group], value, rtol=2e-5, err_msg=name)


def test_an_all_zero_layer_scores_zero_and_eps_is_absolute():
    values = jnp.asarray([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(ns.normalise(values), [[0, 0, 0], [0.5, 1.0, 1.5]])
    np.testing.assert_allclose(ns.normalise(values, eps=1.0), [[0, 0, 0], [1 / 3, 2 / 3, 1.0]])


def test_weight_source_keeps_float64_under_x64():
    with jax.enable_x64(True):
        mlp = eqx.nn.MLP(3, 1, 4, 1, key=jax.random.key(0))
        mlp = jax.tree.map(lambda x: x.astype(jnp.float64) if eqx.is_array(x) else x, mlp)
        anatomy = ns.anatomy(mlp, jnp.zeros(3, jnp.float64))
        _, obs = ns.observe(anatomy, mlp, jnp.sum, jnp.ones((2, 3), jnp.float64))
        for metric in (ns.GraMa("weight"), ns.WeightMagnitude()):
            scores, _ = metric.score(anatomy, obs, metric.init(anatomy))
            assert scores["layers[0]"].dtype == jnp.float64, metric


def test_observe_names_bad_inputs_and_losses(setup):
    anatomy, mlp, _, _, _ = setup
    with pytest.raises(ns.AnatomyError, match=r"takes a batch.*\(3,\).*x\[None\]"):
        ns.observe(anatomy, mlp, jnp.sum, jnp.ones(3))
    with pytest.raises(ns.AnatomyError, match=r"shape \(4, 5\).*\(batch, 3\)"):
        ns.observe(anatomy, mlp, jnp.sum, jnp.ones((4, 5)))
    with pytest.raises(
        ns.AnatomyError, match="got 2 array inputs but the anatomy was built with 1"
    ):
        ns.observe(anatomy, mlp, jnp.sum, jnp.ones((4, 3)), jnp.ones((4, 3)))
    with pytest.raises(ns.AnatomyError, match=r"real scalar, got an array of shape \(4, 1\)"):
        ns.observe(anatomy, mlp, lambda y: y**2, jnp.ones((4, 3)))
    with pytest.raises(ns.AnatomyError, match="loss fails on the model's batched outputs"):
        ns.observe(anatomy, mlp, lambda y: y @ jnp.ones((3, 3)), jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="unknown observation site"):
        ns.observe(anatomy, mlp, jnp.sum, jnp.ones((4, 3)), sites=("pre",))
    (value, aux), _ = ns.observe(
        anatomy, mlp, lambda y: (jnp.sum(y), jnp.mean(y)), jnp.ones((4, 3)), has_aux=True
    )
    np.testing.assert_allclose(aux * 4, value, rtol=1e-6)


@pytest.mark.parametrize(
    "shape, axes",
    [
        ((5, 7), (1,)),
        ((5, 7), (0,)),
        ((3, 4, 2, 2), (1, 2, 3)),
        ((2, 6, 5), (2,)),
        ((4, 3, 5), (0, 2)),
    ],
)
def test_per_unit_sums_match_numpy(shape, axes):
    """The matrix-vector form of the per-unit sum equals numpy's sum for any set of axes."""
    from neurosurgery._metrics._base import _sum_axes

    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    got = np.asarray(_sum_axes(jnp.asarray(x), axes))
    np.testing.assert_allclose(got, x.astype(np.float64).sum(axis=axes), rtol=1e-5, atol=1e-5)
