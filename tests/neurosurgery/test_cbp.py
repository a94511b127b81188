"""Continual backprop: utilities, ages and replacements against a numpy trace of the paper's
algorithm, function preservation, the bias correction, and bad options."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neurosurgery as ns

RHO, MATURITY, DECAY = 0.3, 2, 0.9


def make(key):
    return eqx.nn.MLP(3, 1, 8, 1, activation=jax.nn.tanh, key=key)


def sq_loss(out):
    return sum(jnp.sum(o.astype(jnp.float32) ** 2) for o in jax.tree_util.tree_leaves(out))


def stepper(anatomy, cbp, optimizer=None):
    @eqx.filter_jit
    def run(model, state, x, key, step, opt_state=None, since=None):
        _, obs = ns.observe(anatomy, model, sq_loss, x)
        return cbp.step(
            anatomy,
            ns.Operand(
                model, key, step, init=make, optimizer=optimizer, opt_state=opt_state, since=since
            ),
            obs,
            state,
        )

    return run


def test_cbp_against_a_numpy_trace():
    """Six updates of a 3-8-1 tanh MLP: utilities, ages, the number replaced (⌊accumulated
    ρ · mature units⌋), which units (lowest utility among the mature), their weights, the
    consumer's bias correction and the optimizer state, all against numpy."""
    model = make(jax.random.key(0))
    anatomy = ns.anatomy(model, jnp.zeros(3))
    cbp = ns.CBP(RHO, MATURITY, DECAY)
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    run = stepper(anatomy, cbp, optimizer)
    state = cbp.init(anatomy)
    rng = np.random.default_rng(0)
    util, act, ages, pending = np.zeros(8), np.zeros(8), np.zeros(8, int), 0.0
    replaced_total = 0
    for t in range(1, 7):
        x = rng.normal(size=(16, 3))
        w1, b1 = np.asarray(model.layers[0].weight), np.asarray(model.layers[0].bias)
        w2, b2 = np.asarray(model.layers[1].weight), np.asarray(model.layers[1].bias)
        h = np.tanh(x @ w1.T + b1)
        util = DECAY * util + (1 - DECAY) * np.abs(h).mean(0) * np.abs(w2).sum(0)
        act = DECAY * act + (1 - DECAY) * h.mean(0)
        ages += 1
        corrected = util / (1 - DECAY**ages)
        mature = ages > MATURITY
        pending += RHO * mature.sum()
        n = int(np.floor(pending))
        pending -= n
        order = [i for i in np.argsort(corrected, kind="stable") if mature[i]][:n]
        chosen = np.isin(np.arange(8), order)

        result = run(model, state, jnp.asarray(x, jnp.float32), jax.random.key(t), t, opt_state)
        new = result.model
        assert float(result.info["reset/layers[0]"]) == pytest.approx(n / 8)
        assert float(result.info["mature/layers[0]"]) == pytest.approx(mature.mean())
        nw1, nw2 = np.asarray(new.layers[0].weight), np.asarray(new.layers[1].weight)
        np.testing.assert_array_equal(nw2[:, chosen], 0.0)
        np.testing.assert_array_equal(nw2[:, ~chosen], w2[:, ~chosen])
        np.testing.assert_array_equal(nw1[~chosen], w1[~chosen])
        assert not np.isclose(nw1[chosen], w1[chosen]).any()  # re-drawn
        # the consumer's bias absorbs the replaced units' mean activation through w2
        shift = (w2[:, chosen] * (act[chosen] / (1 - DECAY ** ages[chosen]))).sum(1)
        np.testing.assert_allclose(new.layers[1].bias, b2 + shift, rtol=1e-5, atol=1e-6)
        mu = result.opt_state[0].mu
        assert not np.asarray(mu.layers[1].weight)[:, chosen].any()

        util[chosen], act[chosen], ages[chosen] = 0.0, 0.0, 0
        s = result.state
        np.testing.assert_allclose(s.utility.averages["layers[0]"], util, rtol=1e-4, atol=1e-8)
        np.testing.assert_allclose(s.activation.averages["layers[0]"], act, rtol=1e-4, atol=1e-7)
        np.testing.assert_array_equal(s.utility.ages["layers[0]"], ages)
        np.testing.assert_allclose(s.pending["layers[0]"], pending, rtol=1e-5, atol=1e-6)
        assert "layers[1]" not in s.pending  # output units are never replaced
        replaced_total += n
        model, state, opt_state = new, result.state, result.opt_state
    # mature units 8, 6, 4, 5 at updates 3–6 (replaced units start again at age 0): 0.3 × them
    # accumulated gives 2.4 → 2, 0.4 + 1.8 → 2, 0.2 + 1.2 → 1, 0.4 + 1.5 → 1
    assert replaced_total == 6


def test_updates_between_calls_advance_ages_and_pending_together():
    """A call after `step - since` updates counts them all: ages, the average's decay η^Δ and
    the replacements owed."""
    model = make(jax.random.key(1))
    anatomy = ns.anatomy(model, jnp.zeros(3))
    cbp = ns.CBP(0.05, 3, DECAY)
    x = jax.random.normal(jax.random.key(2), (8, 3))
    result = stepper(anatomy, cbp)(model, cbp.init(anatomy), x, jax.random.key(3), 5, since=0)
    ages = np.asarray(result.state.utility.ages["layers[0]"])
    # 8 mature units (age 5 > 3) owe 0.05 · 8 · 5 = 2 replacements: made now (back to age 0)
    assert float(result.info["reset/layers[0]"]) == pytest.approx(2 / 8)
    assert sorted(ages.tolist()) == [0, 0, 5, 5, 5, 5, 5, 5]
    h = np.tanh(
        np.asarray(x) @ np.asarray(model.layers[0].weight).T + np.asarray(model.layers[0].bias)
    )
    c = np.abs(h).mean(0) * np.abs(np.asarray(model.layers[1].weight)).sum(0)
    kept = np.asarray(result.state.utility.ages["layers[0]"]) > 0
    np.testing.assert_allclose(
        result.state.utility.averages["layers[0]"][kept], ((1 - DECAY**5) * c)[kept], rtol=1e-4
    )


def test_calls_further_apart_count_the_updates_between():
    """A training run calls CBP on its schedule and passes only the last cycle's span as
    `since`: the state's own count of the previous call makes the ages count every update."""
    model = make(jax.random.key(1))
    anatomy = ns.anatomy(model, jnp.zeros(3))
    cbp = ns.CBP(0.01, 100, DECAY)
    run = stepper(anatomy, cbp)
    x = jax.random.normal(jax.random.key(2), (8, 3))
    first = run(model, cbp.init(anatomy), x, jax.random.key(3), 10, since=9)
    assert (np.asarray(first.state.utility.ages["layers[0]"]) == 1).all()
    second = run(first.model, first.state, x, jax.random.key(4), 20, since=19)
    assert (np.asarray(second.state.utility.ages["layers[0]"]) == 11).all()
    assert int(second.state.last) == 20


def _forced(cbp, anatomy, n=2):
    """A state in which every unit is mature and each group owes `n` replacements."""
    state = cbp.init(anatomy)
    ages = {k: jnp.full_like(v, cbp.maturity + 1) for k, v in state.utility.ages.items()}
    utility = state.utility._replace(ages=ages)
    pending = {k: jnp.full_like(v, float(n)) for k, v in state.pending.items()}
    return state._replace(
        utility=utility, activation=state.activation._replace(ages=ages), pending=pending
    )


@pytest.mark.parametrize("name", ["mlp", "inline", "conv", "twin"])
def test_replacing_inactive_units_keeps_the_function(archs, name):
    """Units that contribute nothing (zero outgoing weights) have the lowest utility, so CBP
    replaces them; their fresh incoming weights cannot reach the outputs, so the outputs on
    random inputs are unchanged (max |Δ| ≤ 1e-6) while units really were replaced."""
    arch = archs(name)
    anatomy = arch.anatomy
    cbp = ns.CBP(0.01, 5, bias_correction=False)
    state = _forced(cbp, anatomy)

    def replace(model):
        _, obs = ns.observe(anatomy, model, sq_loss, *arch.batch)
        return cbp.step(
            anatomy, ns.Operand(model, jax.random.key(4), 7, init=arch.make), obs, state
        )

    # the units CBP picks on the model as it is, made inactive: outgoing weights zeroed
    picked = {k: v == 0 for k, v in replace(arch.model).state.utility.ages.items()}
    outgoing = anatomy.element_masks(picked, ("outgoing",))
    leaves = [
        leaf if m is None else jnp.where(m, 0.0, leaf)
        for leaf, m in zip(anatomy._leaves(arch.model), outgoing, strict=True)
    ]
    inactive = eqx.combine(anatomy._tree(leaves), eqx.partition(arch.model, eqx.is_array)[1])
    result = replace(inactive)
    assert float(result.info["reset"]) > 0
    before, after = arch.outputs(inactive), arch.outputs(result.model)
    for a, b in zip(
        jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after), strict=True
    ):
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-6
    # the replaced units are new: their incoming weights were re-drawn
    incoming = anatomy.element_masks(picked, ("incoming",))
    moved = [
        bool(jnp.any(jnp.where(m, new != old, False)))
        for old, new, m in zip(leaves, anatomy._leaves(result.model), incoming, strict=True)
        if m is not None
    ]
    assert any(moved)


def test_bias_correction_keeps_a_constant_units_contribution():
    """A unit with zero incoming weights has the constant activation tanh(b): its replacement
    with the bias correction moves exactly that into the consumer's bias (outputs unchanged to
    1e-6); without the correction the outputs lose w·tanh(b)."""
    model = make(jax.random.key(5))
    w1 = model.layers[0].weight.at[3].set(0.0)
    b1 = model.layers[0].bias.at[3].set(0.05)  # small: the lowest utility
    model = eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[0].bias), model, (w1, b1))
    anatomy = ns.anatomy(model, jnp.zeros(3))
    x = jax.random.normal(jax.random.key(6), (32, 3))
    probe = jax.random.normal(jax.random.key(7), (64, 3))
    for correction in (True, False):
        cbp = ns.CBP(0.01, 0, DECAY, bias_correction=correction)
        state = cbp.init(anatomy)
        state = state._replace(
            pending={"layers[0]": jnp.float32(0.995)}
        )  # one owed after this update
        result = stepper(anatomy, cbp)(model, state, x, jax.random.key(8), 1)
        assert float(result.info["reset/layers[0]"]) == pytest.approx(1 / 8)
        assert float(result.model.layers[1].weight[0, 3]) == 0.0  # unit 3 was the one
        change = jax.vmap(result.model)(probe) - jax.vmap(model)(probe)
        lost = float(model.layers[1].weight[0, 3]) * np.tanh(0.05)
        if correction:
            assert float(jnp.max(jnp.abs(change))) <= 1e-6
        else:
            np.testing.assert_allclose(change, -lost, rtol=1e-4)


def test_cbp_runs_vmapped_over_seeds():
    anatomy = ns.anatomy(make(jax.random.key(0)), jnp.zeros(3))
    cbp = ns.CBP(0.2, 0, DECAY)
    x = jax.random.normal(jax.random.key(1), (8, 3))

    def one(key):
        model = make(key)
        _, obs = ns.observe(anatomy, model, sq_loss, x)
        return cbp.step(anatomy, ns.Operand(model, key, 1, init=make), obs, cbp.init(anatomy))

    keys = jax.random.split(jax.random.key(2), 2)
    batched = eqx.filter_vmap(one)(keys)
    for i in range(2):
        alone = one(keys[i])
        np.testing.assert_allclose(
            batched.model.layers[1].bias[i], alone.model.layers[1].bias, rtol=1e-5
        )
        np.testing.assert_array_equal(
            batched.state.utility.ages["layers[0]"][i], alone.state.utility.ages["layers[0]"]
        )
    assert float(batched.info["reset"][0]) == pytest.approx(1 / 8)  # ⌊0.2 · 8⌋ = 1


def test_bad_options_fail_before_any_work(zoo):
    for rho in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"replacement_rate=.* is invalid.*in \(0, 1\)"):
            ns.CBP(replacement_rate=rho)
    for m in (-1, True):
        with pytest.raises(ValueError, match=r"maturity=.* is invalid.*integer >= 0"):
            ns.CBP(maturity=m)
    with pytest.raises(ValueError, match=r"CBP: decay=1.0 is invalid"):
        ns.CBP(decay=1.0)
    with pytest.raises(ValueError, match=r"replacement_rate=1\.5 is invalid"):
        ns.strategy("cbp", replacement_rate=1.5)
    # the inline model's last weight has no bias to absorb a replaced unit's mean contribution
    inline = zoo.Inline(jax.random.key(0))
    anatomy = ns.anatomy(inline, jnp.zeros(3))
    with pytest.raises(ns.AnatomyError, match=r"no bias to absorb.*bias_correction=False"):
        ns.CBP().init(anatomy)
    ns.CBP(bias_correction=False).init(anatomy)
    cbp = ns.CBP(bias_correction=False)
    with pytest.raises(ValueError, match="pass the observation"):
        cbp.step(
            anatomy,
            ns.Operand(inline, jax.random.key(0), 1, init=zoo.Inline),
            None,
            cbp.init(anatomy),
        )


def test_attention_pairs_are_left_alone_unless_asked():
    """Query and key groups are not reset by default (`no_reset`): CBP leaves them out as the
    other methods do; with include_shared it operates them, and its bias correction, which has
    no consumer bias to shift in a product of two activations, is refused by name."""

    class Attn(eqx.Module):
        qkv: eqx.nn.Linear
        out: eqx.nn.Linear

        def __call__(self, x):
            q, k, v = jnp.split(jax.vmap(self.qkv)(x), 3, axis=-1)
            return jax.vmap(self.out)(jax.nn.softmax(q @ k.T, axis=-1) @ v).mean(0)

    k0, k1 = jax.random.split(jax.random.key(0))
    anatomy = ns.anatomy(
        Attn(eqx.nn.Linear(4, 12, key=k0), eqx.nn.Linear(4, 2, key=k1)), jnp.zeros((3, 4))
    )
    paired = {g.name for g in anatomy.groups if g.paired_with}
    assert paired == {"qkv:query", "qkv:key"}
    assert {g.name for g in ns.CBP().groups(anatomy)} == {"qkv:value"}
    assert {g.name for g in ns.CBP(include_shared=True, bias_correction=False).groups(anatomy)} == (
        paired | {"qkv:value"}
    )
    with pytest.raises(ns.AnatomyError, match=r"'qkv:query' meets 'qkv:key'.*bias_correction=F"):
        ns.CBP(include_shared=True).init(anatomy)
