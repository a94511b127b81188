"""Neuron groups of many architectures, checked against index sets worked out by hand."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neurosurgery as ns
from agents.networks import BroCritic, BroNet, Denoiser, Dense


def owners(group: ns.NeuronGroup, role: str) -> dict[str, np.ndarray]:
    """Leaf path -> owning unit of every leaf entry (-1 where not owned)."""
    return {s.path: s.element_owner() for s in getattr(group, role)}


def rows(n: int, shape: tuple[int, ...], start: int = 0) -> np.ndarray:
    """Unit i owns row start+i of a (out, in) weight."""
    out = np.full(shape, -1)
    out[start : start + n] = np.arange(n)[(slice(None),) + (None,) * (len(shape) - 1)]
    return out


def cols(n: int, shape: tuple[int, int], start: int = 0) -> np.ndarray:
    """Unit i owns column start+i of a (out, in) weight."""
    out = np.full(shape, -1)
    out[:, start : start + n] = np.arange(n)[None, :]
    return out


def assert_owners(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for path, want in expected.items():
        np.testing.assert_array_equal(got[path], want, err_msg=path)


@pytest.mark.newest
@pytest.mark.parametrize("activation", [jax.nn.relu, jnp.tanh, jax.nn.mish, jax.nn.gelu])
def test_mlp(activation, getkey):
    mlp = eqx.nn.MLP(3, 2, 5, 2, activation=activation, key=getkey())
    anatomy = ns.anatomy(mlp, jnp.zeros(3))
    assert anatomy.names == ("layers[0]", "layers[1]", "layers[2]")
    g0, g1, g2 = anatomy
    assert (g0.unit_shape, g1.unit_shape, g2.unit_shape) == ((5,), (5,), (2,))
    assert_owners(
        owners(g0, "incoming"),
        {".layers[0].weight": rows(5, (5, 3)), ".layers[0].bias": np.arange(5)},
    )
    assert_owners(owners(g0, "outgoing"), {".layers[1].weight": cols(5, (5, 5))})
    assert_owners(owners(g1, "outgoing"), {".layers[2].weight": cols(5, (2, 5))})
    assert owners(g0, "per_unit") == {}
    assert (g0.hidden, g1.hidden, g2.output) == (True, True, True)
    assert not any(g.shared for g in anatomy)
    assert [g.name for g in anatomy.resettable] == ["layers[0]", "layers[1]"]


def test_mlp_with_learnable_activation(getkey):
    """Equinox's MLP gives each layer's units their own PReLU slope: shape (depth, width)."""
    mlp = eqx.nn.MLP(3, 2, 4, 2, activation=eqx.nn.PReLU(), key=getkey())
    assert mlp.activation.negative_slope.shape == (2, 4)
    g0, g1, _ = ns.anatomy(mlp, jnp.zeros(3))
    assert_owners(
        owners(g0, "per_unit"), {".activation.negative_slope": np.array([list(range(4)), [-1] * 4])}
    )
    assert_owners(
        owners(g1, "per_unit"), {".activation.negative_slope": np.array([[-1] * 4, list(range(4))])}
    )
    assert_owners(owners(g0, "outgoing"), {".layers[1].weight": cols(4, (4, 4))})


class SharedSlope(eqx.Module):
    l1: eqx.nn.Linear
    slope: jax.Array
    l2: eqx.nn.Linear

    def __call__(self, x):
        h = self.l1(x)
        return self.l2(jnp.where(h > 0, h, self.slope * h))


def test_scalar_parameter_meeting_every_unit_is_not_per_unit(getkey):
    k1, k2 = jax.random.split(getkey())
    model = SharedSlope(eqx.nn.Linear(3, 4, key=k1), jnp.array(0.1), eqx.nn.Linear(4, 1, key=k2))
    g0, _ = ns.anatomy(model, jnp.zeros(3))
    assert g0.per_unit == ()


class PerChannelPReLU(eqx.Module):
    l1: eqx.nn.Linear
    act: eqx.nn.PReLU
    l2: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.l1 = eqx.nn.Linear(3, 4, key=k1)
        self.act = eqx.nn.PReLU(jnp.full((4,), 0.25))
        self.l2 = eqx.nn.Linear(4, 1, key=k2)

    def __call__(self, x):
        return self.l2(self.act(self.l1(x)))


def test_learnable_activation_parameters_are_per_unit(getkey):
    g0, _ = ns.anatomy(PerChannelPReLU(getkey()), jnp.zeros(3))
    assert_owners(owners(g0, "per_unit"), {".act.negative_slope": np.arange(4)})
    assert_owners(owners(g0, "incoming"), {".l1.weight": rows(4, (4, 3)), ".l1.bias": np.arange(4)})


def test_sequential_with_lambda(getkey):
    k1, k2, k3 = jax.random.split(getkey(), 3)
    seq = eqx.nn.Sequential(
        [
            eqx.nn.Linear(3, 6, key=k1),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Linear(6, 4, key=k2),
            eqx.nn.Lambda(jax.nn.sigmoid),
            eqx.nn.Linear(4, 1, key=k3),
        ]
    )
    g0, g1, g2 = ns.anatomy(seq, jnp.zeros(3))
    assert (g0.name, g1.name, g2.name) == ("layers[0]", "layers[2]", "layers[4]")
    assert_owners(owners(g0, "outgoing"), {".layers[2].weight": cols(6, (4, 6))})
    assert_owners(
        owners(g1, "incoming"),
        {".layers[2].weight": rows(4, (4, 6)), ".layers[2].bias": np.arange(4)},
    )
    assert g2.output and g1.layer_type is eqx.nn.Linear


def test_custom_module_with_inline_functions(getkey, zoo):
    g0, g1, g2 = ns.anatomy(zoo.Inline(getkey()), jnp.zeros(3))
    assert (g0.name, g1.name, g2.name) == ("w1", "w2", "w3")
    # Flax-style (in, out) kernels: units own columns, consumers read rows.
    assert_owners(owners(g0, "incoming"), {".w1": cols(5, (3, 5))})
    assert_owners(owners(g0, "outgoing"), {".w2": rows(5, (5, 4))})
    assert_owners(owners(g1, "incoming"), {".w2": cols(4, (5, 4)), ".b2": np.arange(4)})
    assert_owners(owners(g1, "outgoing"), {".w3": rows(4, (4, 2))})
    assert g2.output and g1.layer_type is zoo.Inline


def test_bro_residual_network(getkey):
    w = 6
    net = BroNet(4, 3, width=w, blocks=1, key=getkey())
    anatomy = ns.anatomy(net, jnp.zeros(4))
    stem, d1, d2, head = anatomy
    assert anatomy.names == ("stem", "blocks[0].dense1", "blocks[0].dense2", "head")
    assert_owners(
        owners(stem, "incoming"), {".stem.weight": cols(w, (4, w)), ".stem.bias": np.arange(w)}
    )
    assert_owners(
        owners(stem, "per_unit"),
        {".stem_norm.weight": np.arange(w), ".stem_norm.bias": np.arange(w)},
    )
    # The stem writes the residual stream: read by the block and, through the skip, by the head.
    # (BroNet's layers store their weights (in, out): a unit's incoming weights are a column,
    # its outgoing weights a row of the consumer.)
    assert_owners(
        owners(stem, "outgoing"),
        {".blocks[0].dense1.weight": rows(w, (w, w)), ".head.weight": rows(w, (w, 3))},
    )
    assert_owners(
        owners(d1, "per_unit"),
        {".blocks[0].norm1.weight": np.arange(w), ".blocks[0].norm1.bias": np.arange(w)},
    )
    assert_owners(owners(d1, "outgoing"), {".blocks[0].dense2.weight": rows(w, (w, w))})
    assert_owners(
        owners(d2, "per_unit"),
        {".blocks[0].norm2.weight": np.arange(w), ".blocks[0].norm2.bias": np.arange(w)},
    )
    assert_owners(owners(d2, "outgoing"), {".head.weight": rows(w, (w, 3))})
    assert stem.shared and d2.shared and not d1.shared and head.output
    assert stem.shared_with == ("blocks[0].dense2",) and d2.shared_with == ("stem",)
    assert [g.name for g in anatomy.resettable] == ["blocks[0].dense1"]


def test_bro_critic_two_blocks_stream(getkey):
    critic = BroCritic(3, 2, width=4, blocks=2, n_quantiles=5, key=getkey())
    anatomy = ns.anatomy(critic, jnp.zeros(3), jnp.zeros(2))
    stream = anatomy.filter(shared=True)
    assert [g.name for g in stream] == ["net.stem", "net.blocks[0].dense2", "net.blocks[1].dense2"]
    assert set(owners(anatomy["net.stem"], "outgoing")) == {
        ".net.blocks[0].dense1.weight",
        ".net.blocks[1].dense1.weight",
        ".net.head.weight",
    }
    assert set(owners(anatomy["net.blocks[1].dense2"], "outgoing")) == {".net.head.weight"}
    assert len(anatomy.filter(path="net.blocks[*].dense1")) == 2


def test_dacer_denoiser(getkey):
    obs, act, emb = 5, 2, 16
    den = Denoiser(obs, act, width=8, key=getkey())
    anatomy = ns.anatomy(den, jnp.zeros(obs), jnp.zeros(act), jnp.float32(0.3))
    assert anatomy.names == (
        "time1",
        "time2",
        "mlp.layers[0]",
        "mlp.layers[1]",
        "mlp.layers[2]",
        "mlp.layers[3]",
    )
    t1, t2, m0, _, m2, out = anatomy
    assert t1.unit_shape == (32,) and t2.unit_shape == (emb,)
    assert_owners(owners(t1, "outgoing"), {".time2.weight": cols(32, (emb, 32))})
    # The embedding enters the MLP after obs and the noisy action: columns obs+act ... +16.
    assert_owners(
        owners(t2, "outgoing"),
        {".mlp.layers[0].weight": cols(emb, (8, obs + act + emb), obs + act)},
    )
    assert_owners(
        owners(m0, "incoming"),
        {
            ".mlp.layers[0].weight": rows(8, (8, obs + act + emb)),
            ".mlp.layers[0].bias": np.arange(8),
        },
    )
    assert_owners(owners(m2, "outgoing"), {".mlp.layers[3].weight": cols(8, (act, 8))})
    assert out.output and all(g.hidden for g in (t1, t2, m0, m2))


def test_conv_then_flatten(getkey, zoo):
    c1, c2, fc, _ = ns.anatomy(zoo.ConvNet(getkey()), jnp.zeros((2, 6, 6)))
    assert c1.unit_shape == (3,) and c2.unit_shape == (4,) and c1.layer_type is eqx.nn.Conv2d
    kernel1 = np.broadcast_to(np.arange(3)[:, None, None, None], (3, 2, 3, 3))
    assert_owners(owners(c1, "incoming"), {".c1.weight": kernel1, ".c1.bias": rows(3, (3, 1, 1))})
    kernel2_in = np.broadcast_to(np.arange(3)[None, :, None, None], (4, 3, 3, 3))
    assert_owners(owners(c1, "outgoing"), {".c2.weight": kernel2_in})
    # After flatten (C, H, W) -> C*H*W, channel c owns the block of columns 4c ... 4c+3.
    flat = np.broadcast_to(np.repeat(np.arange(4), 4)[None, :], (5, 16))
    assert_owners(owners(c2, "outgoing"), {".fc.weight": flat})
    assert_owners(owners(fc, "outgoing"), {".out.weight": cols(5, (1, 5))})


def test_two_heads_on_a_shared_trunk(getkey, zoo):
    trunk, policy, value = ns.anatomy(zoo.TwoHeads(getkey()), jnp.zeros(3))
    assert_owners(
        owners(trunk, "outgoing"),
        {".policy.weight": cols(6, (2, 6)), ".value.weight": cols(6, (1, 6))},
    )
    assert policy.output and value.output and trunk.hidden and not trunk.shared


@pytest.mark.newest
def test_twin_critics_stacked_with_vmap(getkey):
    """One group per layer with a leading member axis: unit (m, k) owns member m's row k."""
    w, members = 4, 2
    make = lambda k: eqx.nn.MLP(3, 1, w, 1, key=k)
    twin = eqx.filter_vmap(make)(jax.random.split(getkey(), members))
    anatomy = ns.anatomy(twin, jnp.zeros(3), fn=lambda m, x: eqx.filter_vmap(lambda c: c(x))(m))
    hidden, out = anatomy
    assert hidden.unit_shape == (members, w) and hidden.members == (members,) and hidden.width == w
    unit = np.arange(members * w).reshape(members, w)
    assert_owners(
        owners(hidden, "incoming"),
        {
            ".layers[0].weight": np.broadcast_to(unit[:, :, None], (members, w, 3)),
            ".layers[0].bias": unit,
        },
    )
    assert_owners(
        owners(hidden, "outgoing"),
        {".layers[1].weight": np.broadcast_to(unit[:, None, :], (members, 1, w))},
    )
    assert out.output and out.unit_shape == (members, 1)


def test_filter_summary_and_indexing(getkey):
    anatomy = ns.anatomy(BroNet(3, 1, width=4, blocks=1, key=getkey()), jnp.zeros(3))
    assert len(anatomy) == 4 and anatomy[1] is anatomy["blocks[0].dense1"]
    assert [g.name for g in anatomy.filter(layer_type=Dense, hidden=True, shared=False)] == [
        "blocks[0].dense1"
    ]
    assert [g.name for g in anatomy.filter(path="re:dense[12]$")] == [
        "blocks[0].dense1",
        "blocks[0].dense2",
    ]
    text = anatomy.summary()
    assert (
        "blocks[0].dense1" in text and "shared" in text and ".blocks[0].norm1.weight[0:4]" in text
    )
    assert "blocks[0].dense1" in repr(anatomy[1]) and "hidden" in repr(anatomy[1])
    with pytest.raises(KeyError, match="no neuron group named"):
        anatomy["nope"]


# ---- bad input ---------------------------------------------------------------------------------


def test_not_an_equinox_module():
    with pytest.raises(ns.AnatomyError, match=r"needs an Equinox module.*dict"):
        ns.anatomy({"w": jnp.ones((2, 2))}, jnp.zeros(2))


def test_example_input_rejected(getkey):
    mlp = eqx.nn.MLP(3, 1, 4, 1, key=getkey())
    with pytest.raises(
        ns.AnatomyError, match=r"MLP rejects the example input \(\(5,\),\).*single sample"
    ):
        ns.anatomy(mlp, jnp.zeros(5))


class Sorted(eqx.Module):
    l1: eqx.nn.Linear
    l2: eqx.nn.Linear

    def __call__(self, x):
        return self.l2(jnp.sort(jax.nn.relu(self.l1(x))))


def test_operation_the_tracer_cannot_follow(getkey):
    k1, k2 = jax.random.split(getkey())
    model = Sorted(eqx.nn.Linear(3, 4, key=k1), eqx.nn.Linear(4, 1, key=k2))
    with pytest.raises(
        ns.AnatomyError,
        match=r"cannot follow `sort`.*produced by `\.l1\.weight`.*__neuron_groups__",
    ):
        ns.anatomy(model, jnp.zeros(3))


def test_no_hidden_units(getkey):
    with pytest.raises(
        ns.AnatomyError,
        match=r"Linear has no hidden units: every layer found in it feeds the output directly\. ",
    ):
        ns.anatomy(eqx.nn.Linear(3, 2, key=getkey()), jnp.zeros(3))

    class Offset(eqx.Module):
        """One layer, and a parameter folded in by a reduction (read in no layer)."""

        offset: jax.Array
        out: eqx.nn.Linear

        def __call__(self, x):
            return self.out(x) + jnp.sum(self.offset)

    offset = Offset(jnp.ones(3), eqx.nn.Linear(3, 2, key=getkey()))
    with pytest.raises(
        ns.AnatomyError,
        match=r"parameters in no layer: `\.offset`; a weight computed.*__neuron_groups__",
    ):
        ns.anatomy(offset, jnp.zeros(3))

    class NoLayers(eqx.Module):
        scale: jax.Array

        def __call__(self, x):
            return x * self.scale

    with pytest.raises(ns.AnatomyError, match="no dense or convolution layer"):
        ns.anatomy(NoLayers(jnp.ones(3)), jnp.zeros(3))


class ScanTrunk(eqx.Module):
    """Hidden layers stacked and applied with lax.scan: the tracer does not enter loops."""

    inp: jax.Array
    stack: jax.Array

    def __call__(self, x):
        h = jax.nn.relu(self.inp @ x)

        def body(h, w):
            return jax.nn.relu(w @ h), None

        return jax.lax.scan(body, h, self.stack)[0]


class Declaring(ScanTrunk):
    def __neuron_groups__(self):
        return [ns.DeclaredGroup("input", incoming=[(".inp", 0)], outgoing=[(".stack", 2)])]


class WithTrunk(eqx.Module):
    trunk: ScanTrunk
    head: eqx.nn.Linear

    def __call__(self, x):
        return self.head(self.trunk(x))


@pytest.mark.newest
def test_scan_over_stacked_layers_is_followed(getkey):
    """A scan over stacked weights: one group with a leading layer axis; unit (l, i) owns row i
    of layer l, and its outgoing weights are column i of layer l + 1 (or of the head)."""
    model = WithTrunk(
        ScanTrunk(jnp.ones((4, 3)), jnp.ones((2, 4, 4))), eqx.nn.Linear(4, 1, key=getkey())
    )
    inp, stack, head = ns.anatomy(model, jnp.zeros(3))
    assert (inp.name, stack.name) == ("trunk.inp", "trunk.stack")
    assert stack.unit_shape == (2, 4) and stack.hidden and not stack.shared
    unit = np.arange(8).reshape(2, 4)
    assert_owners(
        owners(stack, "incoming"), {".trunk.stack": np.broadcast_to(unit[:, :, None], (2, 4, 4))}
    )
    next_layer = np.full((2, 4, 4), -1)
    next_layer[1] = unit[0][None, :]  # layer 1 reads layer 0's unit i through column i
    head_cols = unit[1][None, :]
    assert_owners(
        owners(stack, "outgoing"), {".trunk.stack": next_layer, ".head.weight": head_cols}
    )
    first = np.full((2, 4, 4), -1)
    first[0] = np.arange(4)[None, :]
    assert_owners(owners(inp, "outgoing"), {".trunk.stack": first})
    assert head.output


def test_declared_groups_override_inference(getkey):
    trunk = Declaring(jnp.ones((4, 3)), jnp.ones((2, 4, 4)))
    model = WithTrunk(trunk, eqx.nn.Linear(4, 1, key=getkey()))
    anatomy = ns.anatomy(model, jnp.zeros(3))
    assert anatomy.names == ("head", "trunk.input")
    declared = anatomy["trunk.input"]
    assert declared.layer_type is Declaring and declared.unit_shape == (4,)
    assert_owners(owners(declared, "incoming"), {".trunk.inp": rows(4, (4, 3))})
    assert_owners(
        owners(declared, "outgoing"),
        {".trunk.stack": np.broadcast_to(np.arange(4)[None, None, :], (2, 4, 4))},
    )
    value, obs = ns.observe(anatomy, model, jnp.sum, jnp.ones((1, 3)))
    np.testing.assert_allclose(value, jnp.sum(model(jnp.ones(3))), rtol=1e-6)
    assert set(obs.activations) == {"head"}  # declared groups are not observed


def test_declaration_naming_a_missing_leaf(getkey):
    class Bad(ScanTrunk):
        def __neuron_groups__(self):
            return [ns.DeclaredGroup("input", incoming=[(".w", 0)])]

    model = WithTrunk(Bad(jnp.ones((4, 3)), jnp.ones((2, 4, 4))), eqx.nn.Linear(4, 1, key=getkey()))
    with pytest.raises(
        ns.AnatomyError, match=r"declares group 'input' with leaf '\.w'.*\['\.inp', '\.stack'\]"
    ):
        ns.anatomy(model, jnp.zeros(3))


def test_constant_weights_consume_units_without_outgoing_entries(getkey):
    """A network closed over as a constant (not a parameter of the mapped model) just reads."""
    frozen = eqx.nn.Linear(4, 1, key=getkey())

    class Head(eqx.Module):
        l1: eqx.nn.Linear

        def __call__(self, x):
            return frozen(jax.nn.relu(self.l1(x)))

    (g,) = ns.anatomy(Head(eqx.nn.Linear(3, 4, key=getkey())), jnp.zeros(3))
    assert g.hidden and g.outgoing == ()


class Indexing(eqx.Module):
    """Units moved by split, constant gathers and in-place updates."""

    l1: eqx.nn.Linear
    l2: eqx.nn.Linear
    l3: eqx.nn.Linear

    def __call__(self, x):
        a, b = jnp.split(jax.nn.relu(self.l1(x)), 2)  # units 0-2 and 3-5
        picked = b[jnp.array([2, 0])]  # units 5 and 3
        placed = jnp.zeros(4).at[1:3].set(picked)  # at positions 1, 2
        return self.l2(a) + self.l3(placed)


@pytest.mark.newest
def test_split_gather_and_update_slices(getkey):
    k = jax.random.split(getkey(), 3)
    model = Indexing(
        eqx.nn.Linear(3, 6, key=k[0]), eqx.nn.Linear(3, 1, key=k[1]), eqx.nn.Linear(4, 1, key=k[2])
    )
    g1, _, _ = ns.anatomy(model, jnp.zeros(3))
    l3 = np.full((1, 4), -1)
    l3[0, 1], l3[0, 2] = 5, 3
    assert_owners(owners(g1, "outgoing"), {".l2.weight": cols(3, (1, 3)), ".l3.weight": l3})


class Stacking(eqx.Module):
    """Units moved by `jnp.stack`, `jnp.unstack` and `jnp.tile` (one primitive each from JAX
    0.10 on, `tile` from 0.9; broadcasts, slices and concatenations before)."""

    l1: eqx.nn.Linear
    l2: eqx.nn.Linear
    l3: eqx.nn.Linear

    def __call__(self, x):
        h = jax.nn.relu(self.l1(x))  # units 0 and 1
        a, b = jnp.unstack(jnp.stack([h, h[::-1]]))  # units (0, 1) and (1, 0)
        return self.l2(b) + self.l3(jnp.tile(a, 2))  # l3 sees units (0, 1, 0, 1)


@pytest.mark.newest
def test_stack_unstack_and_tile(getkey):
    k = jax.random.split(getkey(), 3)
    model = Stacking(
        eqx.nn.Linear(3, 2, key=k[0]), eqx.nn.Linear(2, 1, key=k[1]), eqx.nn.Linear(4, 1, key=k[2])
    )
    g1, _, _ = ns.anatomy(model, jnp.zeros(3))
    expected = {".l2.weight": np.array([[1, 0]]), ".l3.weight": np.array([[0, 1, 0, 1]])}
    assert_owners(owners(g1, "outgoing"), expected)
