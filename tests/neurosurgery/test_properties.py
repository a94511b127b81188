"""Properties of the anatomy over generated architectures (see `archs.py` for the pieces).

For every group that is neither shared, normalised nor an output, resetting ~30 % of its units
with zeroed outgoing weights is function-preserving, the re-drawn entries then get exactly zero
gradient (they cannot reach the outputs), and the flagged units' activations depend, among the
group's own incoming and per-unit entries, on the flagged units' entries only.
"""

from __future__ import annotations

import types

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, example, given, settings

import neurosurgery as ns
from tests.examples import examples

from . import archs

SPECS = archs.SPECS


def checked(group: ns.NeuronGroup) -> bool:
    return not (group.output or group.shared or group.normalized or group.term_kept)


def feeds_itself(group: ns.NeuronGroup) -> bool:
    """Recurrent or repeated layers: the group's own weights are upstream of its units."""
    return bool({s.leaf for s in group.incoming} & {s.leaf for s in group.outgoing})


@pytest.fixture(scope="session")
def built():
    """`built(spec)`: model, anatomy and compiled functions, once per architecture."""
    cache: dict[archs.Spec, types.SimpleNamespace] = {}

    def get(spec: archs.Spec) -> types.SimpleNamespace:
        if spec in cache:
            return cache[spec]
        make, example, fn = archs.make(spec)
        model, other = archs.draw(make, 0), archs.draw(make, 1)
        anatomy = ns.anatomy(model, example, fn=fn)
        xs = jax.random.normal(jax.random.key(1), (4, *example.shape))
        call = fn or (lambda m, x: m(x))
        out_shape = eqx.filter_eval_shape(lambda m: jax.vmap(lambda x: call(m, x))(xs), model).shape
        cot = jax.random.normal(jax.random.key(2), out_shape)
        names = [
            g.name
            for g in anatomy.observed
            if checked(g) and not feeds_itself(g) and g.name not in archs.sequential(spec)
        ]

        checks = [g.name for g in anatomy if checked(g)]

        def outputs(m):
            return jax.vmap(lambda x: call(m, x))(xs)

        @eqx.filter_jit
        def reset_check(m, o, masks, key):
            """A zero-outgoing reset re-drawing from another model `o`, against the same reset
            re-drawing from the model itself: the largest output change, the two models, and
            the new model's outputs' gradient."""
            new = ns.reset(anatomy, m, masks, key, init=lambda k: o, include_shared=True)
            same = ns.reset(anatomy, m, masks, key, init=lambda k: m, include_shared=True)
            delta = jnp.max(jnp.abs(outputs(new.model) - outputs(same.model)))
            grads = eqx.filter_grad(lambda m: jnp.sum(outputs(m) * cot))(new.model)
            return delta, jnp.max(jnp.abs(outputs(m))), new.model, same.model, grads

        @eqx.filter_jit
        def act_grads(m, masks):
            """Per group, the gradient of its flagged units' activations (random weights)."""
            per_group = {}
            for name in names:

                def acts(m, name=name):
                    got = jax.vmap(lambda x: anatomy._tapped(m, None, x)[1][name])(xs)
                    laid = anatomy._layout(name, got, "activation")
                    weight = jax.random.normal(jax.random.key(3), laid.shape)
                    return jnp.sum(laid * weight * masks[name])

                per_group[name] = eqx.filter_grad(acts)(m)
            return per_group

        cache[spec] = types.SimpleNamespace(
            model=model,
            other=other,
            anatomy=anatomy,
            reset_check=reset_check,
            act_grads=act_grads,
            names=names,
            checks=checks,
        )
        return cache[spec]

    return get


def leaves(tree):
    return jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array))


@settings(
    max_examples=examples(6, 3), deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate)
)
@given(spec=SPECS, seed=st.integers(0, 2**16))
@example(spec=archs.Spec("vec", ("film", "lnres")), seed=7)  # FiLM, always checked
def test_zero_outgoing_resets_preserve_the_function_and_cut_the_gradients(built, spec, seed):
    arch = built(spec)
    anatomy, model = arch.anatomy, arch.model
    rng = np.random.default_rng(seed)
    assert arch.checks, anatomy.summary()
    masks = {}
    for name in arch.checks:
        group = anatomy[name]
        mask = rng.random(group.unit_shape) < 0.3
        mask.flat[rng.integers(mask.size)] = True
        masks[name] = mask
        flagged = {n: np.zeros(anatomy[n].unit_shape, bool) for n in arch.checks}
        flagged[name] = mask
        delta, scale, new, same, grads = arch.reset_check(
            model, arch.other, flagged, jax.random.key(seed)
        )
        moved = [not np.array_equal(a, b) for a, b in zip(leaves(new), leaves(same), strict=True)]
        assert any(moved), name  # the incoming entries were re-drawn
        assert float(delta) <= 1e-6 * float(scale), (spec, name, float(delta), float(scale))
        # the re-drawn units cannot reach the outputs: their entries get no gradient
        cut = anatomy.element_masks({name: jnp.asarray(mask)}, ("incoming", "per_unit"))
        for i, (grad, m) in enumerate(zip(leaves(grads), cut, strict=True)):
            if m is not None:
                assert float(jnp.max(jnp.abs(jnp.where(m, grad, 0.0)))) == 0.0, anatomy.leaf_paths[
                    i
                ]
    # the flagged units' activations depend on the flagged units' own entries only
    act_grads = arch.act_grads(model, {n: masks[n].astype(np.float32) for n in arch.names})
    for name in arch.names:
        group = anatomy[name]
        grads = leaves(act_grads[name])
        for s in (*group.incoming, *group.per_unit):
            owner = s.element_owner()
            others = (owner >= 0) & ~masks[name].reshape(-1)[np.maximum(owner, 0)]
            leak = np.abs(np.asarray(grads[s.leaf]))[others]
            assert leak.size == 0 or leak.max() == 0.0, (spec, name, s.path)
