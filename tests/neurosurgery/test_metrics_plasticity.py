"""The plasticity metrics beyond GraMa and τ-dormant, against values computed by hand with numpy:
Fisher proxy, gradient flow, saturation, duplicate units, feature rank and GXD."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neurosurgery as ns
from agents.training import Surgery

DECAY = 0.9


def norm(x):
    return x / x.mean(axis=-1, keepdims=True)


def tiny(activation, key=3, width=6):
    """A 3-`width`-1 MLP and a numpy forward and backward pass of its mean squared error."""
    mlp = eqx.nn.MLP(3, 1, width, 1, activation=activation, key=jax.random.key(key))
    anatomy = ns.anatomy(mlp, jnp.zeros(3))
    w1, b1 = np.asarray(mlp.layers[0].weight), np.asarray(mlp.layers[0].bias)
    w2, b2 = np.asarray(mlp.layers[1].weight), np.asarray(mlp.layers[1].bias)
    return mlp, anatomy, (w1, b1, w2, b2)


def by_hand(params, x, t, activation):
    """h, ∂L/∂h and ∂L/∂z per sample, for L = mean((y − t)²)."""
    w1, b1, w2, b2 = params
    z = x @ w1.T + b1
    if activation == "tanh":
        h, slope = np.tanh(z), 1 - np.tanh(z) ** 2
    elif activation == "sigmoid":
        h = 1 / (1 + np.exp(-z))
        slope = h * (1 - h)
    else:
        h, slope = np.maximum(z, 0), (z > 0).astype(np.float64)
    y = h @ w2.T + b2
    grad_h = (2 * (y - t) / len(x)) @ w2
    return h, grad_h, grad_h * slope


def batches(n, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(size, 3)), rng.normal(size=(size, 1))) for _ in range(n)]


def observe(anatomy, mlp, x, t):
    t = jnp.asarray(t, jnp.float32)
    return ns.observe(anatomy, mlp, lambda y: jnp.mean((y - t) ** 2), jnp.asarray(x, jnp.float32))[
        1
    ]


@pytest.mark.parametrize(
    "metric, per_step",
    [
        (ns.Fisher(decay=DECAY), lambda h, gh, gz: (gz**2).mean(0)),
        (ns.Fisher("activation", decay=DECAY), lambda h, gh, gz: (gh**2).mean(0)),
        (ns.GradientFlow(decay=DECAY), lambda h, gh, gz: np.abs(gh).mean(0)),
        (ns.GradientFlow("preactivation", decay=DECAY), lambda h, gh, gz: np.abs(gz).mean(0)),
    ],
    ids=["fisher", "fisher_activation", "grad_flow", "grad_flow_preactivation"],
)
def test_running_averages_over_several_updates(metric, per_step):
    """Each call is one update of a bias-corrected running average (decay η): after t updates
    avg = Σ_s (1 − η) η^(t − s) v_s and the score is avg / (1 − η^t) over the layer mean."""
    mlp, anatomy, params = tiny(jax.nn.tanh)
    state = metric.init(anatomy)
    avg = np.zeros(6)
    for t, (x, y) in enumerate(batches(4), start=1):
        scores, state = metric.score(anatomy, observe(anatomy, mlp, x, y), state)
        h, gh, gz = by_hand(params, x, y, "tanh")
        avg = DECAY * avg + (1 - DECAY) * per_step(h, gh, gz)
        np.testing.assert_allclose(state.averages["layers[0]"], avg, rtol=1e-4)
        assert (np.asarray(state.ages["layers[0]"]) == t).all()
        np.testing.assert_allclose(scores["layers[0]"], norm(avg / (1 - DECAY**t)), rtol=1e-4)
    # a replaced unit starts again: its average and age back to zero, the others untouched
    restarted = state.restart({"layers[0]": jnp.arange(6) == 2})
    assert float(restarted.averages["layers[0]"][2]) == 0.0
    assert int(restarted.ages["layers[0]"][2]) == 0 and int(restarted.ages["layers[0]"][3]) == 4
    np.testing.assert_array_equal(
        restarted.averages["layers[0]"][3], state.averages["layers[0]"][3]
    )
    corrected = restarted.corrected(DECAY)["layers[0]"]
    assert float(corrected[2]) == 0.0 and bool(jnp.all(jnp.isfinite(corrected)))


def test_fisher_sums_a_convolutions_positions_into_its_bias_gradient(getkey):
    """For a convolution, g_i(x) = Σ_p ∂ℓ(x)/∂z_i,p is the per-sample gradient of the channel's
    bias, computed here the ordinary way, one sample at a time."""
    conv = eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(1, 3, 3, key=getkey()),
            eqx.nn.Lambda(jnp.tanh),
            eqx.nn.Lambda(jnp.ravel),
            eqx.nn.Linear(3 * 3 * 3, 1, key=getkey()),
        ]
    )
    anatomy = ns.anatomy(conv, jnp.zeros((1, 5, 5)))
    xs = jax.random.normal(getkey(), (4, 1, 5, 5))
    _, obs = ns.observe(anatomy, conv, lambda y: jnp.sum(y**2), xs)
    metric = ns.Fisher(decay=0.0)
    scores, _ = metric.score(anatomy, obs, metric.init(anatomy))

    def bias_grad(x):
        loss = lambda b: jnp.sum(eqx.tree_at(lambda m: m.layers[0].bias, conv, b)(x) ** 2)
        return jax.grad(loss)(conv.layers[0].bias).reshape(-1)

    per_sample = np.asarray(jax.vmap(bias_grad)(xs), np.float64)  # (4, 3)
    np.testing.assert_allclose(scores["layers[0]"], norm((per_sample**2).mean(0)), rtol=1e-4)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_saturation_share_against_numpy(activation):
    fn = jax.nn.tanh if activation == "tanh" else jax.nn.sigmoid
    mlp, anatomy, params = tiny(fn)
    # units 0 and 1 deep in a flat tail on every sample, unit 2 on some
    edge = 2.5 if activation == "tanh" else 4.5  # about where the flat tail starts
    bias = mlp.layers[0].bias.at[0].set(12.0).at[1].set(-12.0).at[2].set(edge)
    mlp = eqx.tree_at(lambda m: m.layers[0].bias, mlp, bias)
    params = (params[0], np.asarray(bias), *params[2:])
    x, y = batches(1, size=64)[0]
    scores, _ = ns.Saturation(activation).score(
        anatomy, observe(anatomy, mlp, x, y), ns.EmptyState()
    )
    h = by_hand(params, x, y, activation)[0]
    slope, top = (1 - h**2, 1.0) if activation == "tanh" else (h * (1 - h), 0.25)
    expected = 1 - (slope <= 0.05 * top).mean(0)
    np.testing.assert_allclose(scores["layers[0]"], expected, atol=1e-6)
    assert float(scores["layers[0]"][0]) == 0.0 and float(scores["layers[0]"][1]) == 0.0
    assert 0.0 < float(scores["layers[0]"][2]) < 1.0  # a share, not divided by the layer mean
    assert "layers[1]" not in scores  # the linear output layer is not scored


def test_saturation_refuses_layers_of_another_activation():
    """A ReLU layer whose outputs happen to lie in [0, 1] still fails: its gradients do not
    follow the sigmoid's derivative. The error names the layer."""
    mlp, anatomy, _ = tiny(jax.nn.relu)
    mlp = jax.tree.map(lambda w: 0.1 * w if eqx.is_array(w) else w, mlp)  # outputs in [0, 1)
    x, y = batches(1)[0]
    obs = observe(anatomy, mlp, x, y)
    assert float(jnp.max(obs.activations["layers[0]"])) < 1.0
    for activation in ("sigmoid", "tanh"):
        with pytest.raises(Exception, match=r"group 'layers\[0\]' is not a " + activation):
            jax.block_until_ready(ns.Saturation(activation).score(anatomy, obs, ns.EmptyState()))
    # naming an unknown group says so
    with pytest.raises(ValueError, match=r"\['layer0'\] are not observed groups"):
        ns.Saturation(groups=("layer0",)).score(anatomy, obs, ns.EmptyState())
    _, no_grads = ns.observe(anatomy, mlp, jnp.sum, jnp.ones((4, 3)), sites=())
    with pytest.raises(ValueError, match="no gradients at the 'preactivation' site"):
        ns.Saturation().score(anatomy, no_grads, ns.EmptyState())


def test_duplicates_find_a_cloned_unit():
    """Unit 4 is unit 1 scaled by 2 (ReLU commutes with a positive scale): collinear, so unit 4
    scores 0 and unit 1, the first of the pair, keeps its score."""
    mlp, anatomy, params = tiny(jax.nn.relu, key=5)
    w1, b1 = params[0].copy(), params[1].copy()
    w1[4], b1[4] = 2 * w1[1], 2 * b1[1]
    mlp = eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[0].bias), mlp, (w1, b1))
    mlp = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32) if eqx.is_array(a) else a, mlp)
    x, y = batches(1, size=32)[0]
    obs = observe(anatomy, mlp, x, y)
    h = by_hand((w1, b1, *params[2:]), x, y, "relu")[0]
    for centered in (False, True):
        scores, _ = ns.Duplicates(centered).score(anatomy, obs, ns.EmptyState())
        v = h - h.mean(0) if centered else h
        n = np.linalg.norm(v, axis=0)
        safe = np.where(n > 0, n, 1.0)
        cos = np.where(np.outer(n, n) > 0, np.abs(v.T @ v) / np.outer(safe, safe), 0.0)
        expected = [1 - max([cos[i, j] for i in range(j)], default=0.0) for j in range(6)]
        np.testing.assert_allclose(scores["layers[0]"], expected, atol=1e-5)
        assert float(scores["layers[0]"][4]) < 1e-5 and float(scores["layers[0]"][1]) > 0.01


def test_duplicates_compare_units_within_each_ensemble_member(getkey):
    twin = eqx.filter_vmap(lambda k: eqx.nn.MLP(3, 1, 4, 1, key=k))(jax.random.split(getkey(), 2))
    anatomy = ns.anatomy(twin, jnp.zeros(3), fn=lambda m, x: eqx.filter_vmap(lambda c: c(x))(m))
    xs = jax.random.normal(getkey(), (8, 3))
    _, obs = ns.observe(anatomy, twin, jnp.sum, xs)
    scores, _ = ns.Duplicates().score(anatomy, obs, ns.EmptyState())
    assert scores["layers[0]"].shape == (2, 4)
    for m in range(2):
        w, b = np.asarray(twin.layers[0].weight[m]), np.asarray(twin.layers[0].bias[m])
        h = np.maximum(np.asarray(xs) @ w.T + b, 0)
        n = np.linalg.norm(h, axis=0)
        cos = np.abs(h.T @ h) / np.maximum(np.outer(n, n), 1e-30)
        expected = [1 - max([cos[i, j] for i in range(j)], default=0.0) for j in range(4)]
        np.testing.assert_allclose(scores["layers[0]"][m], expected, atol=1e-5)


def test_feature_rank_against_numpy_svd():
    mlp, anatomy, params = tiny(jax.nn.tanh, width=8)
    # two units copies of others: the features lose rank
    w1, b1 = params[0].copy(), params[1].copy()
    w1[6], b1[6], w1[7], b1[7] = w1[0], b1[0], w1[1], b1[1]
    mlp = eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[0].bias), mlp, (w1, b1))
    mlp = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32) if eqx.is_array(a) else a, mlp)
    x, y = batches(1, size=32)[0]
    obs = observe(anatomy, mlp, x, y)
    phi = by_hand((w1, b1, *params[2:]), x, y, "tanh")[0]
    _, s, vt = np.linalg.svd(phi, full_matrices=False)
    delta = 0.01
    k = int(np.argmax(np.cumsum(s) >= (1 - delta) * s.sum())) + 1
    p = s / s.sum()
    erank = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
    assert k <= 6  # rank 6 at most
    metric = ns.FeatureRank(delta)
    figures = metric.figures(anatomy, obs)
    assert float(figures["srank/layers[0]"]) == k
    np.testing.assert_allclose(figures["effective_rank/layers[0]"], erank, rtol=1e-4)
    assert int(ns.srank(jnp.asarray(phi, jnp.float32), delta)) == k
    scores, _ = metric.score(anatomy, obs, ns.EmptyState())
    leverage = (vt[:k] ** 2).sum(0)
    np.testing.assert_allclose(scores["layers[0]"], leverage / (k / 8), rtol=1e-3, atol=1e-4)
    # a clone and its original share one unit's leverage
    np.testing.assert_allclose(scores["layers[0]"][0], scores["layers[0]"][6], rtol=1e-3)
    assert (
        float(ns.srank(jnp.zeros((4, 3)))) == 0 and float(ns.effective_rank(jnp.zeros((4, 3)))) == 0
    )
    np.testing.assert_allclose(ns.effective_rank(jnp.eye(5)), 5.0, rtol=1e-5)


@pytest.mark.parametrize("reference", ["zero", "mean"])
def test_gxd_against_numpy(reference):
    mlp, anatomy, params = tiny(jax.nn.tanh)
    x, y = batches(1)[0]
    scores, _ = ns.GXD(reference).score(anatomy, observe(anatomy, mlp, x, y), ns.EmptyState())
    h, gh, _ = by_hand(params, x, y, "tanh")
    ref = h.mean(0) if reference == "mean" else 0.0
    np.testing.assert_allclose(scores["layers[0]"], norm(np.abs(gh * (h - ref)).mean(0)), rtol=1e-4)


def test_gxd_is_the_first_order_change_of_the_loss():
    """Removing unit i (its activation set to zero) changes sample x's share of the mean squared
    error by −∂L(x)/∂a_i · a_i(x) plus the second-order term (w_i a_i(x))² / B: the per-sample
    term GXD averages, read from the library's observation."""
    mlp, anatomy, (_, _, w2, b2) = tiny(jax.nn.tanh)
    x, t = batches(1, size=8)[0]
    obs = observe(anatomy, mlp, x, t)
    a = np.asarray(obs.activations["layers[0]"][:, 0], np.float64)
    g = np.asarray(obs.activation_grads["layers[0]"][:, 0], np.float64)
    share = lambda h: ((h @ w2.T + b2 - t) ** 2).ravel() / len(x)
    for i in range(6):
        removed = a.copy()
        removed[:, i] = 0
        second = (w2[0, i] * a[:, i]) ** 2 / len(x)
        np.testing.assert_allclose(
            share(removed) - share(a) - second, -g[:, i] * a[:, i], rtol=1e-4, atol=1e-8
        )


def test_every_named_metric_runs_under_jit_and_vmap():
    """Each registered metric's name is its key, and its scores are the same eagerly and jitted
    and vmapped over networks (states included). All metrics are scored in one function, so
    the jitted and vmapped program is compiled once for all of them."""
    make = lambda k: eqx.nn.MLP(3, 1, 5, 1, activation=jax.nn.sigmoid, key=k)
    anatomy = ns.anatomy(make(jax.random.key(0)), jnp.zeros(3))
    xs = jax.random.normal(jax.random.key(1), (6, 3))
    keys = jax.random.split(jax.random.key(2), 2)
    # a sigmoid network: tanh saturation refuses it (tested above)
    metrics = {name: ns.metric(name) for name in ns.METRICS if name != "saturation_tanh"}
    for name, metric in metrics.items():
        assert metric.name == name

    def twice(key):
        states = {name: metric.init(anatomy) for name, metric in metrics.items()}
        scores = {}
        for shift in (0.0, 1.0):
            loss = lambda y, shift=shift: jnp.mean((y - shift) ** 2)
            _, obs = ns.observe(anatomy, make(key), loss, xs)
            for name, metric in metrics.items():
                scores[name], states[name] = metric.score(anatomy, obs, states[name])
        return scores

    eager = twice(keys[0])
    batched = jax.jit(jax.vmap(twice))(keys)
    assert set(eager) == set(metrics)
    for name, scores in eager.items():
        assert scores, name
        for group, value in scores.items():
            np.testing.assert_allclose(
                batched[name][group][0], value, rtol=1e-4, atol=1e-6, err_msg=name
            )


def test_every_stateful_metric_starts_afresh_for_the_units_a_reset_replaces():
    """A metric that keeps per-unit state is told which units a strategy replaced: a Resetter
    driven by it sets their entries back to zero and leaves the other units' as they were."""
    make = lambda k: eqx.nn.MLP(3, 1, 5, 1, activation=jax.nn.sigmoid, key=k)
    model = make(jax.random.key(0))
    anatomy = ns.anatomy(model, jnp.zeros(3))
    xs = jax.random.normal(jax.random.key(1), (6, 3))
    _, obs = ns.observe(anatomy, model, lambda y: jnp.mean((y - 1.0) ** 2), xs)
    unit = jnp.arange(5) == 1
    stateful = []
    for name in ns.METRICS:
        if name == "saturation_tanh":
            continue  # a sigmoid network: tanh saturation refuses it
        metric = ns.metric(name)
        state = metric.init(anatomy)
        _, state = metric.score(anatomy, obs, state)
        if not jax.tree.leaves(state):
            assert ns.after_reset(metric, state, {"layers[0]": unit}) == state
            continue
        stateful.append(name)
        assert hasattr(metric, "on_reset"), f"{name} keeps per-unit state but has no on_reset"
        select = lambda scores: {"layers[0]": unit}
        resetter = ns.Resetter(metric, select=select, schedule=ns.Schedule(every=1))
        result = resetter.step(
            anatomy, ns.Operand(model, jax.random.key(2), 1, init=make), obs, metric.init(anatomy)
        )
        np.testing.assert_array_equal(result.replaced["layers[0]"], unit)
        for before, after in zip(
            jax.tree.leaves(state), jax.tree.leaves(result.state), strict=True
        ):
            if before.shape != (5,):
                continue
            assert float(after[1]) == 0.0, name
            np.testing.assert_array_equal(np.asarray(after)[~unit], np.asarray(before)[~unit])
        # not due: nothing is replaced, nothing restarts
        idle = ns.Resetter(metric, select=select, schedule=ns.Schedule(every=1000))
        result = idle.step(
            anatomy, ns.Operand(model, jax.random.key(2), 1, init=make), obs, metric.init(anatomy)
        )
        assert not bool(result.replaced["layers[0]"].any())
        assert eqx.tree_equal(result.state, state)
    assert {"fisher", "grad_flow", "utility"} <= set(stateful)


def test_a_training_run_logs_whole_layer_figures():
    """The trainer's surgery step logs FeatureRank's srank and effective rank next to the
    inactive ratios."""
    mlp, anatomy, _ = tiny(jax.nn.tanh)
    x, y = batches(1)[0]
    obs = observe(anatomy, mlp, x, y)
    surgery = Surgery((ns.FeatureRank(),), ("critic",), 0.0, 1, None, ())
    _, logged, _ = surgery._log(anatomy, obs, {"feature_rank": ns.EmptyState()})
    figures = ns.FeatureRank().figures(anatomy, obs)
    assert set(figures) <= {k.removeprefix("feature_rank/") for k in logged}
    assert float(logged["feature_rank/srank/layers[0]"]) == float(figures["srank/layers[0]"])


def test_bad_options_name_the_problem():
    with pytest.raises(ValueError, match="Fisher site 'weights' is unknown"):
        ns.Fisher("weights")
    for make in (ns.Fisher, ns.GradientFlow, ns.Utility):
        with pytest.raises(ValueError, match=r"decay=1.0 is invalid.*\[0, 1\)"):
            make(decay=1.0)
    with pytest.raises(ValueError, match="GradientFlow site 'output' is unknown"):
        ns.GradientFlow("output")
    with pytest.raises(ValueError, match=r"activation 'relu' is unknown.*bounded smooth"):
        ns.Saturation("relu")
    with pytest.raises(ValueError, match=r"tol=1.5 is invalid"):
        ns.Saturation(tol=1.5)
    with pytest.raises(ValueError, match="reference 'one' is unknown"):
        ns.GXD("one")
    with pytest.raises(ValueError, match=r"delta=1.0 must lie in \[0, 1\)"):
        ns.FeatureRank(1.0)
