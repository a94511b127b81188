"""Strategies and schedules: what acts when, under jit and vmap, and the named presets."""

import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neurosurgery as ns

from ..user_metrics import Start


def make(key):
    return eqx.nn.MLP(3, 1, 8, 1, key=key)


def with_dead_units(model):
    return eqx.tree_at(lambda m: m.layers[0].bias, model, model.layers[0].bias.at[:2].set(-50.0))


XS = jax.random.normal(jax.random.key(9), (8, 3))


@pytest.mark.parametrize(
    "schedule, due_at",
    [
        (ns.Schedule(every=10), [10, 20, 30]),
        (ns.Schedule(every=10, start=5), [15, 25, 35]),
        (ns.Schedule(every=10, end=25), [10, 20]),
        (ns.Schedule.at(7, 3), [3, 7]),
    ],
)
def test_schedule_points(schedule, due_at):
    due = [s for s in range(0, 36) if bool(schedule.due(s))]
    assert due == [s for s in due_at if s <= 35]


def test_schedule_spans_count_every_point_inside():
    """A loop that advances several updates at a time asks for the span it just did."""
    every10 = ns.Schedule(every=10, end=25)
    for since, step, expected in [
        (8, 11, True),
        (10, 19, False),
        (15, 35, True),
        (20, 35, False),
        (-5, 5, False),
    ]:
        assert bool(every10.due(step, since)) == expected, (since, step)
    points = ns.Schedule.at(3, 7)
    assert bool(points.due(8, since=4)) and not bool(points.due(6, since=3))
    # under jit with traced counts
    assert bool(jax.jit(every10.due)(jnp.int32(12), jnp.int32(9)))


def test_bad_schedules():
    with pytest.raises(ValueError, match="every must be >= 1"):
        ns.Schedule(every=0)
    with pytest.raises(ValueError, match="end > start"):
        ns.Schedule(every=5, start=10, end=10)
    with pytest.raises(ValueError, match="distinct update counts >= 1"):
        ns.Schedule.at(3, 3)
    with pytest.raises(ValueError, match="either explicit points"):
        ns.Schedule(every=5, points=(3,))


def test_resetter_under_jit_and_vmap_over_seeds():
    anatomy = ns.anatomy(make(jax.random.key(0)), jnp.zeros(3))
    strategy = ns.strategy("redo", tau=0.5, every=10)

    @eqx.filter_jit
    def run(key, step):
        model = with_dead_units(make(key))
        _, obs = ns.observe(anatomy, model, jnp.sum, XS)
        result = strategy.step(
            anatomy, ns.Operand(model, key, step, init=make), obs, strategy.init(anatomy)
        )
        return model, result.model, result.info

    keys = jax.random.split(jax.random.key(1), 3)
    for step, due in ((10, True), (15, False), (0, False)):
        old, new, info = eqx.filter_vmap(run, in_axes=(0, None))(keys, step)
        same = np.array_equal(np.asarray(old.layers[0].weight), np.asarray(new.layers[0].weight))
        assert same != due
        assert (info["flagged/layers[0]"] >= 2 / 8).all()
        assert ((info["reset/layers[0]"] > 0) == due).all()
        assert ((info["reset"] > 0) == due).all() and "flagged/layers[1]" not in info  # output
        single = run(keys[1], step)[1]
        np.testing.assert_allclose(new.layers[0].weight[1], single.layers[0].weight, rtol=1e-6)


def test_fresh_weights_are_drawn_only_when_due():
    """The constructor runs inside the branch that resets: a step that is not due never calls
    it (counted by a callback that runs only where the compiled branch executes)."""
    calls = []
    model = with_dead_units(make(jax.random.key(0)))
    anatomy = ns.anatomy(model, jnp.zeros(3))

    def counting_make(key):
        jax.debug.callback(lambda: calls.append(1))
        return make(key)

    strategy = ns.strategy("regrama", tau=0.0, every=4)
    optimizer = optax.adam(1e-3)

    @jax.jit
    def step(params, opt_state, i):
        m = eqx.combine(params, eqx.filter(model, eqx.is_array, inverse=True))
        _, obs = ns.observe(anatomy, m, jnp.sum, XS)
        result = strategy.step(
            anatomy,
            ns.Operand(
                m,
                jax.random.key(i),
                i,
                init=counting_make,
                optimizer=optimizer,
                opt_state=opt_state,
            ),
            obs,
            strategy.init(anatomy),
        )
        return eqx.filter(result.model, eqx.is_array), result.opt_state

    params = eqx.filter(model, eqx.is_array)
    opt_state = optimizer.init(params)
    for i in range(1, 10):
        params, opt_state = step(params, opt_state, i)
    jax.effects_barrier()
    assert len(calls) == 2  # steps 4 and 8


def test_whole_network_strategies():
    model = make(jax.random.key(0))
    anatomy = ns.anatomy(model, jnp.zeros(3))
    fresh = make(jax.random.key(5))
    optimizer = optax.adam(1e-3)
    params = eqx.filter(model, eqx.is_array)
    with jax.numpy_dtype_promotion("standard"):
        _, opt_state = optimizer.update(
            jax.tree.map(jnp.ones_like, params), optimizer.init(params), params
        )
    sp = ns.strategy("shrink_perturb", shrink=0.5, perturb=0.25, every=2)
    assert not sp.observes
    result = sp.step(
        anatomy,
        ns.Operand(
            model,
            jax.random.key(5),
            2,
            init=lambda k: fresh,
            optimizer=optimizer,
            opt_state=opt_state,
        ),
        None,
        sp.init(anatomy),
    )
    np.testing.assert_allclose(
        result.model.layers[0].weight,
        0.5 * model.layers[0].weight + 0.25 * fresh.layers[0].weight,
        rtol=1e-6,
    )
    assert float(result.info["reset"]) == 1.0
    # the optimizer state is kept by shrink-and-perturb
    for a, b in zip(jax.tree.leaves(opt_state), jax.tree.leaves(result.opt_state), strict=True):
        np.testing.assert_array_equal(a, b)
    idle = sp.step(
        anatomy,
        ns.Operand(model, jax.random.key(5), 3, init=lambda k: fresh),
        None,
        sp.init(anatomy),
    )
    np.testing.assert_array_equal(idle.model.layers[0].weight, model.layers[0].weight)
    assert float(idle.info["reset"]) == 0.0
    full = ns.strategy("full_reset", at=(3,))
    result = full.step(
        anatomy,
        ns.Operand(
            model,
            jax.random.key(5),
            3,
            init=lambda k: fresh,
            optimizer=optimizer,
            opt_state=opt_state,
        ),
        None,
        full.init(anatomy),
    )
    np.testing.assert_array_equal(result.model.layers[1].weight, fresh.layers[1].weight)
    fresh_state = optimizer.init(eqx.filter(fresh, eqx.is_array))
    for a, b in zip(jax.tree.leaves(fresh_state), jax.tree.leaves(result.opt_state), strict=True):
        np.testing.assert_array_equal(a, b)
    named = full.step(
        anatomy,
        ns.Operand(model, jax.random.key(5), 3, init=ns.lecun_normal()),
        None,
        full.init(anatomy),
    )
    assert (named.model.layers[0].bias == 0).all()
    assert not np.array_equal(named.model.layers[0].weight, model.layers[0].weight)


def test_presets_and_their_options():
    assert set(ns.STRATEGIES) == {
        "redo",
        "regrama",
        "regrama_activation",
        "regrama_weight",
        "shrink_perturb",
        "full_reset",
        "cbp",
        "reborn",
        "cpr",
        "injection",
    }
    assert isinstance(ns.strategy("cpr"), ns.CPR)
    assert isinstance(ns.strategy("injection"), ns.PlasticityInjection)
    cbp = ns.strategy("cbp", replacement_rate=0.01, maturity=5, every=10, bias_correction=False)
    assert cbp == ns.CBP(0.01, 5, 0.99, False, ns.Schedule(10))
    regrama = ns.strategy("regrama_weight", tau=0.01, every=500, max_fraction=0.05)
    assert isinstance(regrama, ns.Resetter) and regrama.name == "regrama_weight"
    assert regrama.metric == ns.GraMa("weight") and regrama.schedule == ns.Schedule(500)
    assert regrama.select == ns.Selection("capped", 0.01, max_fraction=0.05)
    assert "tau" in ns.strategy_options("redo") and "shrink" in ns.strategy_options(
        "shrink_perturb"
    )
    with pytest.raises(ValueError, match="tau do not apply to the shrink_perturb strategy"):
        ns.strategy("shrink_perturb", tau=0.1)
    with pytest.raises(ValueError, match="unknown reset strategy 'regrana'; known: redo"):
        ns.strategy("regrana")
    with pytest.raises(ValueError, match="tau"):
        ns.strategy("redo", tau=-1.0)
    with pytest.raises(ValueError, match="either every"):
        ns.strategy("full_reset")
    assert {m: ns.metric(m).name for m in ns.METRICS} == {m: m for m in ns.METRICS}
    with pytest.raises(ValueError, match="unknown metric 'gramma'"):
        ns.metric("gramma")


def test_user_metrics_and_strategies_by_import_path():
    assert ns.metric("neurosurgery:Dormant") == ns.Dormant()
    made = ns.strategy("neurosurgery:FullReset")
    assert isinstance(made, ns.FullReset)
    with pytest.raises(ValueError, match="has no 'Nope'"):
        ns.metric("neurosurgery:Nope")
    with pytest.raises(ValueError, match="cannot be imported"):
        ns.metric("no_such_module_here:X")
    with pytest.raises(ValueError, match="not a metric"):
        ns.metric("neurosurgery:Schedule")


def test_a_users_module_in_the_working_directory_is_found(tmp_path, monkeypatch):
    """`--surgery.metrics my_metrics:Quiet` from the folder that holds my_metrics.py works
    without PYTHONPATH (a console script does not put the working directory on sys.path)."""
    (tmp_path / "my_quiet_metrics.py").write_text(
        "import dataclasses, neurosurgery as ns\n"
        "@dataclasses.dataclass(frozen=True)\n"
        "class Quiet(ns.Dormant):\n"
        "    name: str = 'quiet'\n"
    )
    here = str(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", here)])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_quiet_metrics", raising=False)
    assert ns.metric("my_quiet_metrics:Quiet").name == "quiet"
    assert sys.path[-1] == here  # appended: an installed module of the same name comes first
    with pytest.raises(ValueError, match="module 'not_here_either' cannot be imported"):
        ns.metric("not_here_either:X")


def test_bad_strategy_configs():
    with pytest.raises(TypeError, match="metric"):  # the annotation's check or our own
        ns.Resetter("grama")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outgoing='ones' is unknown"):
        ns.Resetter(ns.GraMa(), outgoing="ones")
    with pytest.raises(ValueError, match=r"shrink=1\.5 is invalid"):
        ns.ShrinkPerturb(shrink=1.5)
    with pytest.raises(ValueError, match="selection mode 'top' is unknown"):
        ns.Selection("top")


def test_stateless_parts_use_optaxs_empty_state():
    """One convention for states that hold nothing: optax's (`ns.EmptyState` is it), so a
    stateless metric's or strategy's state is what an optax transformation without state has."""
    assert ns.EmptyState is optax.EmptyState
    model = eqx.nn.MLP(3, 1, 4, 1, key=jax.random.key(0))
    anatomy = ns.anatomy(model, jnp.zeros(3))
    assert ns.metric("grama").init(anatomy) == optax.EmptyState()
    assert ns.strategy("regrama").init(anatomy) == optax.scale(1.0).init({})


def test_a_metric_whose_init_takes_the_parameters_gets_them_through_every_strategy():
    model = eqx.nn.MLP(3, 1, 8, 1, key=jax.random.key(0))
    anatomy = ns.anatomy(model, jnp.zeros(3))
    params = eqx.filter(model, eqx.is_array)
    want = jax.tree_util.tree_leaves(params)
    resetter = ns.Resetter(Start(), ns.Selection("threshold", tau=0.0), ns.Schedule(every=1))
    chain = ns.Chain((resetter, ns.strategy("shrink_perturb")))
    for strategy in (resetter, ns.ReBorn(metric=Start()), chain):
        got = strategy.init(anatomy, params)
        got = got[0] if isinstance(strategy, ns.Chain) else got
        assert all(a is b for a, b in zip(got, want, strict=True))
        with pytest.raises(ValueError, match=r"start's init takes the network's parameters"):
            strategy.init(anatomy)
    assert ns.init_state(ns.Dormant(), anatomy, params) == ns.EmptyState()  # others: as before
