"""Composed strategies (`ns.Chain`, `ns.strategy("a+b")`): members act in order, each on its own
schedule and state, as if applied one after the other by hand."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neurosurgery as ns


def make(key):
    return eqx.nn.MLP(3, 1, 8, 1, key=key)


XS = jax.random.normal(jax.random.key(9), (8, 3))
MODEL = eqx.tree_at(
    lambda m: m.layers[0].bias,
    make(jax.random.key(0)),
    make(jax.random.key(0)).layers[0].bias.at[:3].set(-50.0),
)
ANATOMY = ns.anatomy(MODEL, jnp.zeros(3))
OPTIMIZER = optax.adam(1e-3)


def arrays(tree):
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(tree, eqx.is_array))]


def run(strategy, step, state=None):
    _, obs = ns.observe(ANATOMY, MODEL, jnp.sum, XS)
    params = eqx.filter(MODEL, eqx.is_array)
    # a non-zero optimizer state, so that a reset of its entries shows
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes float and int
        opt_state = OPTIMIZER.update(params, OPTIMIZER.init(params), params)[1]
    state = strategy.init(ANATOMY) if state is None else state
    key = jax.random.key(4)
    return strategy.step(
        ANATOMY,
        ns.Operand(MODEL, key, step, init=make, optimizer=OPTIMIZER, opt_state=opt_state),
        obs,
        state,
    ), (obs, opt_state, key)


def by_hand(members, step):
    """The members' steps applied one after the other, member i with fold_in(key, i), every
    member reading the observation of the model before the step."""
    (_, (obs, opt_state, key)) = run(members[0], step)
    model, info = MODEL, {}
    for i, m in enumerate(members):
        r = m.step(
            ANATOMY,
            ns.Operand(
                model,
                jax.random.fold_in(key, i),
                step,
                init=make,
                optimizer=OPTIMIZER,
                opt_state=opt_state,
            ),
            obs,
            m.init(ANATOMY),
        )
        model, opt_state = r.model, r.opt_state
        info.update({f"{m.name}/{k}": v for k, v in r.info.items()})
    return model, opt_state, info


@pytest.mark.parametrize("step, due", [(6, ("regrama", "shrink_perturb")), (3, ("regrama",))])
def test_a_chain_equals_its_members_applied_in_turn(step, due):
    regrama = ns.strategy("regrama", tau=0.0, every=3)
    sp = ns.strategy("shrink_perturb", every=2, shrink=0.5, perturb=0.5)
    chain = ns.Chain((regrama, sp))
    assert chain.name == "regrama+shrink_perturb" and chain.observes
    result, _ = run(chain, step)
    model, opt_state, info = by_hand((regrama, sp), step)
    for got, want in zip(arrays(result.model), arrays(model), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(arrays(result.opt_state), arrays(opt_state), strict=True):
        np.testing.assert_array_equal(got, want)
    assert set(result.info) == set(info)
    for k in info:
        np.testing.assert_array_equal(np.asarray(result.info[k]), np.asarray(info[k]))
    # what acted: ReGraMa reset the 3 dead units (3/8 of the layer), S&P acted on even steps
    assert float(result.info["regrama/reset/layers[0]"]) == (3 / 8 if "regrama" in due else 0)
    assert float(result.info["shrink_perturb/reset"]) == (1.0 if "shrink_perturb" in due else 0)
    assert isinstance(result.state, tuple) and len(result.state) == 2


def test_a_chain_is_due_when_any_member_is_and_runs_under_jit_and_vmap():
    chain = ns.strategy("regrama+shrink_perturb", every=5)
    assert isinstance(chain, ns.Chain)
    mixed = ns.Chain((ns.strategy("regrama", every=3), ns.strategy("shrink_perturb", every=5)))
    assert [s for s in range(1, 16) if bool(mixed.schedule.due(s))] == [3, 5, 6, 9, 10, 12, 15]
    assert bool(mixed.schedule.due(11, since=8)) and not bool(mixed.schedule.due(8, since=6))
    assert isinstance(mixed.schedule, ns.When)

    @eqx.filter_jit
    def step(key):
        _, obs = ns.observe(ANATOMY, MODEL, jnp.sum, XS)
        return mixed.step(
            ANATOMY, ns.Operand(MODEL, key, 3, init=make), obs, mixed.init(ANATOMY)
        ).model

    keys = jax.random.split(jax.random.key(2), 2)
    both = eqx.filter_vmap(step)(keys)
    one = step(keys[1])
    np.testing.assert_allclose(both.layers[0].weight[1], one.layers[0].weight, rtol=1e-6)
    assert not np.array_equal(np.asarray(one.layers[0].weight), MODEL.layers[0].weight)


def test_named_compositions_route_each_option_to_the_members_that_take_it():
    chain = ns.strategy("regrama+shrink_perturb", tau=0.25, every=7, shrink=0.9)
    regrama, sp = chain.strategies
    assert regrama.select.tau == 0.25 and regrama.schedule.every == 7
    assert sp.shrink == 0.9 and sp.schedule.every == 7
    assert {"tau", "shrink", "every"} <= set(ns.strategy_options("regrama+shrink_perturb"))
    with pytest.raises(ValueError, match=r"maturity apply to no member of regrama\+shrink_perturb"):
        ns.strategy("regrama+shrink_perturb", maturity=3)
    with pytest.raises(ValueError, match="empty member"):
        ns.strategy("regrama++cbp")
    with pytest.raises(ValueError, match="unknown reset strategy 'nope'"):
        ns.strategy("regrama+nope")


def test_bad_chains_are_refused():
    regrama = ns.strategy("regrama")
    with pytest.raises(ValueError, match="at least two"):
        ns.Chain((regrama,))
    with pytest.raises(TypeError, match=r"is not a strategy|'strategies'"):
        ns.Chain((regrama, "shrink_perturb"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="plasticity injection, which cannot be composed"):
        ns.strategy("regrama+injection")
    with pytest.raises(ValueError, match="regrama appear more than once"):
        ns.Chain((regrama, regrama))
    chain = ns.Chain((regrama, ns.strategy("shrink_perturb")))
    with pytest.raises(ValueError, match="tuple of the members' states"):
        run(chain, 3, state=ns.EmptyState())


class Halve:
    """A strategy of one's own, written against the documented step: halve every weight of the
    network when due, and record what its operand held."""

    name = "halve"
    schedule = ns.Schedule(every=1)
    observes = False

    def init(self, anatomy):
        return ns.EmptyState()

    def step(self, anatomy, operand, observation, state):
        self.seen = operand
        halved = jax.tree.map(lambda x: x / 2 if eqx.is_array(x) else x, operand.model)
        return ns.StepResult(halved, operand.opt_state, state, {"reset": jnp.ones(())})


class OldStyle(Halve):
    """The step signature before `ns.Operand`."""

    def step(self, anatomy, model, observation, state, key, step, *, init, optimizer=None,
             opt_state=None, since=None):  # fmt: skip
        raise AssertionError("never called")


def test_a_strategy_of_ones_own_gets_the_operand_after_the_members_before_it():
    halve = Halve()
    result, (_, _, key) = run(ns.Chain((ns.strategy("full_reset", every=1), halve)), 3)
    full, _ = by_hand([ns.strategy("full_reset", every=1)], 3)[:2]
    for got, fresh in zip(arrays(halve.seen.model), arrays(full), strict=True):
        np.testing.assert_array_equal(got, fresh)  # the first member's network
    for got, fresh in zip(arrays(result.model), arrays(full), strict=True):
        np.testing.assert_array_equal(got, fresh / 2)
    assert np.array_equal(
        jax.random.key_data(halve.seen.key), jax.random.key_data(jax.random.fold_in(key, 1))
    )
    assert halve.seen.step == 3 and halve.seen.init is make and halve.seen.optimizer is OPTIMIZER
    assert set(result.info) == {"full_reset/reset", "halve/reset"}


def test_a_strategy_written_for_the_earlier_step_signature_is_refused_by_name():
    message = r"the step of strategy 'halve' takes \(anatomy, model, .*operand\.model"
    with pytest.raises(TypeError, match=message):
        ns.Chain((ns.strategy("regrama"), OldStyle()))
