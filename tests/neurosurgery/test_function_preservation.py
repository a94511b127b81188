"""Function preservation where a method promises it, on generated architectures and on the
agents' networks.

Each case is a model with dead units: in every resettable group that is not behind a norm over
its units, some units get zero incoming weights and bias, so their activation is exactly zero on
every input where the activation function maps 0 to 0 (ReLU, tanh, GELU, SiLU). The batch's
τ-dormant scores find them (score exactly 0), and then

- ReDo at τ = 0 re-draws their incoming weights and zeroes their outgoing ones,
- ReBorn (τ = 0) makes them copies of over-active donors and splits the donors' outgoing
  weights between the two,
- CBP, owed as many replacements as a group has dead units, replaces exactly those (the lowest
  utility), with its bias correction where every consumer has a bias,
- plasticity injection adds a fresh head minus its frozen twin (on any model, dead units or not),

and the outputs on the batch move by at most 1e-6 (times the outputs' scale where that exceeds
1), while units really were operated on. Groups behind a norm over their units (`normalized`,
LayerNorm) are outside the promise — a re-drawn unit changes the layer's statistics — and their
units are kept alive here (LayerNorm scale 1, shift 0), so the methods leave them alone; the
last test shows such a reset does move the outputs. The same holds for groups `entangled_with`
another (a layer applied to its own output reads both through the same weight columns). Examples are derandomised: the same ones
run everywhere.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, assume, example, given, settings

import agents
import neurosurgery as ns
from neurosurgery._methods._injection import injected_parts
from tests.examples import examples

from . import archs

SPECS = archs.SPECS

TOL = 1e-6
BATCH = 32


@dataclasses.dataclass
class Case:
    """A model, how it is called on one sample, a batch, and its constructor."""

    model: Any
    call: Callable[..., Any] | None
    example: tuple[Any, ...]
    xs: tuple[Any, ...]
    make: Callable[[jax.Array], Any]

    def __post_init__(self) -> None:
        self.anatomy = ns.anatomy(self.model, *self.example, fn=self.call)

    def apply(self, model: Any, *x: Any) -> Any:
        return model(*x) if self.call is None else self.call(model, *x)

    def outputs(self, model: Any, direct: bool = False) -> list[jax.Array]:
        """The model's outputs on the batch (`direct`: called as `model(x)`, not `call`)."""
        call = (lambda m, *x: m(*x)) if direct else self.apply
        run = eqx.filter_jit(lambda m, xs: jax.vmap(lambda *x: call(m, *x))(*xs))
        return jax.tree_util.tree_leaves(run(model, self.xs))


def identity_norms(model: Any) -> Any:
    """Every LayerNorm's scale 1 and shift 0 (its units then take both signs on a batch)."""

    def fix(x):
        if isinstance(x, eqx.nn.LayerNorm) and x.weight is not None:
            return eqx.tree_at(
                lambda n: (n.weight, n.bias), x, (jnp.ones_like(x.weight), jnp.zeros_like(x.bias))
            )
        return x

    return jax.tree.map(fix, model, is_leaf=lambda x: isinstance(x, eqx.nn.LayerNorm))


def sq_loss(out: Any) -> jax.Array:
    return sum(jnp.sum(o.astype(jnp.float32) ** 2) for o in jax.tree_util.tree_leaves(out))


def delta(case: Case, before: Any, after: Any, direct: bool = False) -> tuple[float, float]:
    a, b = case.outputs(before, direct), case.outputs(after, direct)
    change = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(a, b, strict=True))
    return change, max(1.0, max(float(jnp.max(jnp.abs(x))) for x in a))


def with_dead_units(case: Case, seed: int) -> tuple[Any, dict[str, jax.Array], Any]:
    """The model with ~30 % of the units of every plain resettable group killed (zero incoming
    entries), its τ-dormant scores on the batch, and its observation."""
    anatomy = case.anatomy
    rng = np.random.default_rng(seed)
    masks = {}
    for g in anatomy.resettable:
        if not g.preserving:
            continue
        mask = rng.random(g.unit_shape) < 0.3
        mask.flat[rng.integers(mask.size)] = True
        masks[g.name] = jnp.asarray(mask)
    incoming = anatomy.element_masks(masks, ("incoming",))
    leaves = [
        leaf if m is None else jnp.where(m, jnp.zeros_like(leaf), leaf)
        for leaf, m in zip(anatomy._leaves(case.model), incoming, strict=True)
    ]
    model = eqx.combine(anatomy._tree(leaves), eqx.partition(case.model, eqx.is_array)[1])

    @eqx.filter_jit
    def observe(model, *xs):
        obs = ns.observe(anatomy, model, sq_loss, *xs)[1]
        return obs, ns.Dormant().score(anatomy, obs, ns.EmptyState())[0]

    obs, scores = observe(model, *case.xs)
    plain = [g.name for g in anatomy.resettable if g.preserving and g.name in scores]
    assert any(bool(jnp.any(scores[n] == 0)) for n in plain), anatomy.summary()
    # the premise: no dormant unit outside the promise (a unit dead by chance in a group whose
    # reset cannot keep the function, which ReDo would reset too); such draws are left out
    for g in anatomy.resettable:
        if not g.preserving and g.name in scores:
            assume(bool(jnp.all(scores[g.name] > 0)))
    return model, scores, obs


def jitted(step):
    """A strategy's step as one compiled call (the anatomy, `init` and counts static): one
    compile instead of hundreds of eagerly dispatched operations, each compiled on first use."""
    return eqx.filter_jit(step)


def check_resets(case: Case, seed: int) -> dict[str, float]:
    """ReDo, ReBorn and CBP on the model with dead units; the output change of each."""
    anatomy = case.anatomy
    model, scores, obs = with_dead_units(case, seed)
    key = jax.random.key(seed)
    changes = {}

    redo = ns.strategy("redo", tau=0.0, every=1)
    result = jitted(redo.step)(
        anatomy, ns.Operand(model, key, 1, init=case.make), obs, redo.init(anatomy)
    )
    assert float(result.info["reset"]) > 0
    changes["redo"] = delta(case, model, result.model)

    reborn = ns.ReBorn(schedule=ns.Schedule(every=1))
    try:
        state = reborn.init(anatomy)
    except ns.AnatomyError as e:
        # named and skipped: value units of different attention heads, and units some of whose
        # consumers read only a part of them (a FiLM layer's conditioning reads half its input)
        skip = tuple(re.findall(r"'([^']+)' \((?:a copy moves|`)", str(e)))

        def partly_read(name: str) -> bool:
            n = anatomy[name].n_units
            owners = [s.element_owner() for s in anatomy[name].outgoing]
            return any(0 < len(np.unique(o[o >= 0])) < n for o in owners)

        assert skip and all(n.endswith("value_proj") or partly_read(n) for n in skip), e
        reborn = dataclasses.replace(reborn, skip=skip)
        state = reborn.init(anatomy)
    result = jitted(reborn.step)(anatomy, ns.Operand(model, key, 1, init=case.make), obs, state)
    assert float(result.info["reset"]) > 0
    changes["reborn"] = delta(case, model, result.model)

    for correction in (True, False):
        cbp = ns.CBP(replacement_rate=1e-6, maturity=0, bias_correction=correction)
        try:  # the bias correction needs a bias in every consumer; it says so at init
            state = cbp.init(anatomy)
        except ns.AnatomyError as e:
            assert correction and "no bias to absorb" in str(e), e
            continue
        dead = {k: jnp.sum(scores[k] == 0, axis=-1).astype(jnp.float32) for k in state.pending}
        owed = {k: jnp.where(dead[k] > 0, dead[k] + 0.5, 0.0) for k in state.pending}
        result = jitted(cbp.step)(
            anatomy, ns.Operand(model, key, 1, init=case.make), obs, state._replace(pending=owed)
        )
        replaced = sum(float(jnp.sum(dead[k])) for k in dead)
        got = sum(float(result.info[f"reset/{k}"]) * anatomy[k].n_units for k in state.pending)
        assert got == pytest.approx(replaced), (got, replaced)
        changes[f"cbp (bias correction {correction})"] = delta(case, model, result.model)
    return changes


def check_injection(case: Case) -> tuple[float, float]:
    strategy = ns.PlasticityInjection(at=1, layers=2)
    wrapped = strategy.wrap(case.model, *case.example, fn=case.call)
    fresh = lambda key: strategy.wrap(case.make(key), *case.example, fn=case.call)
    anatomy = ns.anatomy(wrapped, *case.example)
    result = jitted(strategy.step)(
        anatomy, ns.Operand(wrapped, jax.random.key(3), 1, init=fresh), None, ns.EmptyState()
    )
    assert float(result.info["injected"]) == 1.0
    new = injected_parts(result.model)[0]
    assert any(bool(jnp.any(f != 0)) for f in new.fresh)  # a fresh head was drawn
    return delta(case, wrapped, result.model, direct=True)  # the wrapper keeps `call`


def assert_kept(changes: dict[str, tuple[float, float]], what: Any) -> None:
    for method, (change, scale) in changes.items():
        assert change <= TOL * scale, (what, method, change, scale)


@pytest.fixture(scope="module")
def generated():
    cache: dict[archs.Spec, Case] = {}

    def get(spec: archs.Spec) -> Case:
        if spec not in cache:
            make, example, fn = archs.make(spec)
            draw = lambda key, make=make: identity_norms(make(key))  # traced: jax's init
            xs = jax.random.normal(jax.random.key(1), (BATCH, *example.shape))
            cache[spec] = Case(identity_norms(archs.draw(make, 0)), fn, (example,), (xs,), draw)
        return cache[spec]

    return get


@settings(
    max_examples=examples(6, 2),
    deadline=None,
    derandomize=True,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
)
@given(spec=SPECS, seed=st.integers(0, 2**16))
@example(spec=archs.Spec("vec", ("film", "lnres")), seed=7)  # FiLM, always checked
def test_resets_of_dead_units_and_injection_keep_the_function_of_generated_networks(
    generated, spec, seed
):
    """Convolution with pooling, attention, a recurrent cell or token mixing in front; dense
    layers, LayerNorm residual blocks, concatenations, gated units and a layer called twice in
    the body; single or a vmapped ensemble of two."""
    case = generated(spec)
    changes = check_resets(case, seed)
    changes["injection"] = check_injection(case)
    assert_kept(changes, spec)


# ---- the agents' networks ------------------------------------------------------------------
def _agent(kind: str):
    if kind == "sac":
        cfg = agents.SACConfig(
            batch_size=4,
            actor=agents.NetworkConfig(width=8, depth=2),
            critic=agents.NetworkConfig(width=8, depth=2),
        )
        return agents.SAC(cfg, 3, 2)
    if kind == "bro":
        cfg = agents.BROConfig(batch_size=4, critic_width=8, actor_width=6, n_quantiles=5)
        return agents.BRO(cfg, 3, 2)
    cfg = agents.DACERConfig(
        batch_size=4, denoiser_width=8, critic=agents.NetworkConfig(width=8, activation="gelu")
    )
    return agents.DACER(cfg, 3, 2)


def _batch(n: int = BATCH) -> agents.Batch:
    rng = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    return agents.Batch(f(n, 3), jnp.tanh(f(n, 2)), f(n), f(n, 3), jnp.zeros(n))


def agent_case(kind: str, network: str) -> Case:
    agent = _agent(kind)
    state = agent.init(jax.random.key(0))
    objective = eqx.filter_jit(agent.objectives)(state, _batch(), jax.random.key(1))[network]
    example = tuple(jax.tree.map(lambda x: x[0], objective.inputs))
    model = identity_norms(objective.model)
    make = lambda key: identity_norms(agent.make_network(network, key))
    return Case(model, objective.call, example, tuple(objective.inputs), make)


@pytest.mark.parametrize(
    "kind,network",
    [("sac", "critic"), ("sac", "actor"), ("dacer", "actor")],
)
def test_resets_of_dead_units_and_injection_keep_the_function_of_the_agents_networks(kind, network):
    """SAC's twin critics (a vmapped ensemble) and actor, and DACER's denoiser (called with the
    diffusion step); DACER's critic is SAC's kind of ensemble."""
    case = agent_case(kind, network)
    changes = check_resets(case, 0)
    changes["injection"] = check_injection(case)
    assert_kept(changes, (kind, network))


@pytest.mark.parametrize("network", ["critic", "actor"])
def test_bros_hidden_groups_are_all_normalised_and_injection_keeps_its_function(network):
    """Every hidden group of a BroNet sits behind a LayerNorm over its units, so no unit reset
    promises BRO's function; plasticity injection, which re-draws no unit, keeps it."""
    case = agent_case("bro", network)
    hidden = [g for g in case.anatomy.resettable]
    assert hidden and all(g.normalized for g in hidden), case.anatomy.summary()
    assert_kept({"injection": check_injection(case)}, ("bro", network))


class NormedMLP(eqx.Module):
    """A LayerNorm group (`l1`) and a plain one (`l2`), no residual path."""

    l1: eqx.nn.Linear
    norm: eqx.nn.LayerNorm
    l2: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 3)
        self.l1, self.norm = eqx.nn.Linear(3, 6, key=k[0]), eqx.nn.LayerNorm(6)
        self.l2, self.head = eqx.nn.Linear(6, 5, key=k[1]), eqx.nn.Linear(5, 2, key=k[2])

    def __call__(self, x):
        return self.head(jax.nn.relu(self.l2(jax.nn.relu(self.norm(self.l1(x))))))


def test_a_reset_behind_a_norm_moves_the_outputs():
    """Outside the promise: with zero outgoing weights, re-drawing a unit's incoming weights
    from another model and "re-drawing" them from the model itself give the same outputs in a
    plain group (the new weights cannot reach the outputs), but not in a LayerNorm group, where
    the unit's new pre-activation moves the statistics that normalise the other units."""
    model, other = NormedMLP(jax.random.key(0)), NormedMLP(jax.random.key(1))
    example = jnp.ones(3)
    anatomy = ns.anatomy(model, example)
    assert anatomy["l1"].normalized and anatomy["l2"].preserving, anatomy.summary()
    xs = jax.random.normal(jax.random.key(1), (BATCH, 3))
    case = Case(model, None, (example,), (xs,), lambda k: other)
    moved = {}
    for name in ("l1", "l2"):
        mask = np.zeros(anatomy[name].unit_shape, bool)
        mask[0] = True
        reset = lambda source, name=name, mask=mask: (
            ns.reset(
                anatomy, model, {name: jnp.asarray(mask)}, jax.random.key(0), init=lambda k: source
            ).model
        )
        change, scale = delta(case, reset(model), reset(other))
        moved[name] = change / scale
    assert moved["l1"] > 1e-3 and moved["l2"] <= TOL, moved


class TwoProducers(eqx.Module):
    """One head read from two producers: `head.weight[:, j]` carries unit j of both."""

    l1: eqx.nn.Linear
    l2: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 3)
        self.l1, self.l2 = eqx.nn.Linear(3, 4, key=k[0]), eqx.nn.Linear(3, 4, key=k[1])
        self.head = eqx.nn.Linear(4, 2, key=k[2])

    def __call__(self, x):
        return self.head(jax.nn.relu(self.l1(x))) + self.head(jax.nn.relu(self.l2(x)))


@pytest.mark.parametrize("which", ["twice", "two producers"])
def test_groups_read_through_the_same_columns_are_entangled_and_a_reset_moves_the_outputs(
    which,
):
    """A unit whose outgoing columns also carry another group's unit: zeroing them silences
    both, so the anatomy marks the groups `entangled_with` each other (not `preserving`), and a
    reset of one unit does move the outputs. A plain MLP has no such group."""
    if which == "twice":
        make, example, fn = archs.make(archs.Spec("vec", ("twice",)))
        model, pair = archs.draw(make, 0), ("body[0].a", "body[0].b")
    else:
        make, example, fn = TwoProducers, jnp.ones(3), None
        model, pair = TwoProducers(jax.random.key(0)), ("l1", "l2")
    anatomy = ns.anatomy(model, example, fn=fn)
    a, b = anatomy[pair[0]], anatomy[pair[1]]
    assert a.entangled_with == (b.name,) and b.entangled_with == (a.name,), anatomy.summary()
    assert not a.preserving and "entangled" in anatomy.summary()
    xs = jax.random.normal(jax.random.key(1), (BATCH, *example.shape))
    case = Case(model, fn, (example,), (xs,), make)
    mask = np.zeros(a.unit_shape, bool)
    mask[0] = True
    new = ns.reset(anatomy, model, {a.name: jnp.asarray(mask)}, jax.random.key(2), init=make)
    change, scale = delta(case, model, new.model)
    assert change > 1e-3 * scale, change

    mlp = eqx.nn.MLP(3, 2, 8, 2, key=jax.random.key(0))
    assert all(g.preserving for g in ns.anatomy(mlp, jnp.ones(3)).groups)


def test_a_pair_whose_zeroed_partner_keeps_the_term_is_not_preserving():
    """Linear attention with keys softmaxed over positions (a U-Net's): zeroing a key row makes
    it 1/n after the softmax, not 0, so a query unit re-drawn with its key zeroed still reaches
    the outputs. The anatomy finds it by running the traced program and marks the query group
    `term_kept` (not `preserving`), naming the product's line; the key group, whose partner
    rows do vanish, stays preserving, and so do a softmax attention's pairs."""
    model = archs.draw(lambda k: archs.build(archs.Spec("linattn", ()), k), 0)
    anatomy = ns.anatomy(model, jnp.zeros((3, 4)))  # an all-zero example hides nothing
    query, key = anatomy["front.qkv:query"], anatomy["front.qkv:key"]
    assert not query.preserving and "softmax over positions" in query.term_kept
    assert "archs.py" in query.term_kept and query.no_reset == query.term_kept
    assert key.preserving and not key.term_kept and "term-kept" in anatomy.summary()
    xs = jax.random.normal(jax.random.key(1), (BATCH, 3, 4))
    make = archs.make(archs.Spec("linattn", ()))[0]
    case = Case(model, None, (jnp.zeros((3, 4)),), (xs,), make)
    other = archs.draw(make, 1)
    for group, moves in ((query, True), (key, False)):
        mask = {group.name: jnp.arange(group.n_units).reshape(group.unit_shape) % 2 == 0}
        new = ns.reset(
            anatomy, model, mask, jax.random.key(2), init=lambda k: other, include_shared=True
        )
        same = ns.reset(
            anatomy, model, mask, jax.random.key(2), init=lambda k: model, include_shared=True
        )
        change, scale = delta(case, same.model, new.model)
        assert (change > 1e-3 * scale) == moves, (group.name, change)
    # built under a trace (abstract weights), the same verdict
    traced = eqx.filter_eval_shape(lambda: ns.anatomy(model, jnp.zeros((3, 4))).groups)
    assert [g.term_kept != "" for g in traced] == [g.term_kept != "" for g in anatomy.groups]
    attn = ns.anatomy(
        archs.draw(lambda k: archs.build(archs.Spec("attn", ()), k), 0), jnp.zeros((3, 4))
    )
    paired = [g for g in attn.groups if g.paired_with]
    assert paired and all(g.preserving for g in paired), attn.summary()
