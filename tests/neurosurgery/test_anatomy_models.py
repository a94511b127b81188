"""Neuron groups of the architectures people bring — pooling CNNs, attention, gated and
recurrent cells, scans, lookups, stateful layers — checked against index sets worked out by
hand, and their observations against values computed directly."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neurosurgery as ns

from .archs import draw
from .test_anatomy import assert_owners, cols, owners, rows

pytestmark = pytest.mark.newest  # many kinds of JAX programs: all of them on the newest JAX


def batch(key, n, *shape):
    return jax.random.normal(key, (n, *shape))


class PoolCNN(eqx.Module):
    c1: eqx.nn.Conv2d
    c2: eqx.nn.Conv2d
    fc: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 3)
        self.c1 = eqx.nn.Conv2d(1, 3, 3, padding=1, key=k[0])
        self.c2 = eqx.nn.Conv2d(3, 4, 3, padding=1, key=k[1])
        self.fc = eqx.nn.Linear(4 * 2 * 2, 2, key=k[2])

    def __call__(self, x):
        x = eqx.nn.MaxPool2d(2, 2)(jax.nn.relu(self.c1(x)))
        x = eqx.nn.AvgPool2d(2, 2)(jax.nn.relu(self.c2(x)))
        return self.fc(x.reshape(-1))


def test_pooling_keeps_channels_and_flatten_hands_each_its_columns():
    model = draw(PoolCNN, 0)
    anatomy = ns.anatomy(model, jnp.zeros((1, 8, 8)))
    c1, c2, fc = anatomy
    assert_owners(
        owners(c1, "outgoing"),
        {".c2.weight": np.broadcast_to(np.arange(3)[None, :, None, None], (4, 3, 3, 3))},
    )
    # after avg-pooling to 2×2 and flattening (C, H, W), channel c owns columns 4c ... 4c+3
    assert_owners(
        owners(c2, "outgoing"), {".fc.weight": np.repeat(np.arange(4), 4)[None, :].repeat(2, 0)}
    )
    assert fc.output and c1.resettable and c2.resettable
    xs = batch(jax.random.key(1), 2, 1, 8, 8)
    _, obs = ns.observe(anatomy, model, jnp.sum, xs)
    pooled = jax.vmap(lambda x: eqx.nn.MaxPool2d(2, 2)(jax.nn.relu(model.c1(x))))(xs)
    # the activation is what the next layer reads: 4×4 pooled positions per channel
    np.testing.assert_allclose(
        obs.activations["c1"], pooled.reshape(2, 3, 16).transpose(0, 2, 1), rtol=1e-5, atol=1e-6
    )
    assert obs.grads("preactivation")["c1"].shape == (2, 64, 3)  # before pooling: 8×8


class Attention(eqx.Module):
    attn: eqx.nn.MultiheadAttention
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.attn = eqx.nn.MultiheadAttention(2, 8, key=k1)
        self.head = eqx.nn.Linear(8, 1, key=k2)

    def __call__(self, x):
        return self.head(jnp.mean(self.attn(x, x, x), axis=0))


def test_attention_pairs_queries_with_keys_and_values_feed_the_output_projection():
    model = draw(Attention, 0)
    anatomy = ns.anatomy(model, jnp.zeros((3, 8)))
    q, k, v, o, head = anatomy
    assert (q.name, k.name, v.name, o.name) == tuple(
        f"attn.{p}_proj" for p in ("query", "key", "value", "output")
    )
    # unit i of the queries (head i // 4, dimension i % 4) meets unit i of the keys
    assert_owners(owners(q, "outgoing"), {".attn.key_proj.weight": rows(8, (8, 8))})
    assert_owners(owners(k, "outgoing"), {".attn.query_proj.weight": rows(8, (8, 8))})
    assert_owners(owners(v, "outgoing"), {".attn.output_proj.weight": cols(8, (8, 8))})
    assert_owners(owners(o, "outgoing"), {".head.weight": cols(8, (1, 8))})
    assert q.paired_with == ("attn.key_proj",) and k.paired_with == ("attn.query_proj",)
    assert (
        q.kind() == "paired" and not q.resettable and "meet those of `attn.key_proj`" in q.no_reset
    )
    assert [g.name for g in anatomy.resettable] == ["attn.value_proj", "attn.output_proj"]
    assert head.output and "not reset by default" in anatomy.summary()
    # by default a reset leaves the pairs alone; on request it re-draws the flagged query
    # rows and zeroes the matching key rows, so the pair's score term starts from zero
    flag = {"attn.query_proj": jnp.arange(8) == 5}
    same = ns.reset(anatomy, model, flag, jax.random.key(0), init=lambda key: draw(Attention, 1))
    assert same.applied == {}
    new = ns.reset(
        anatomy,
        model,
        flag,
        jax.random.key(0),
        init=lambda key: draw(Attention, 1),
        include_shared=True,
    ).model
    np.testing.assert_array_equal(
        new.attn.query_proj.weight[5], draw(Attention, 1).attn.query_proj.weight[5]
    )
    assert (new.attn.key_proj.weight[5] == 0).all()
    np.testing.assert_array_equal(new.attn.key_proj.weight[:5], model.attn.key_proj.weight[:5])
    xs = batch(jax.random.key(2), 2, 3, 8)
    _, obs = ns.observe(anatomy, model, jnp.sum, xs)
    a = model.attn
    qv = jnp.einsum("tc,dc->td", xs[0], a.query_proj.weight)
    np.testing.assert_allclose(
        obs.activations["attn.query_proj"][0], qv / 2.0, rtol=1e-5, atol=1e-6
    )
    # the values as the output projection reads them: weighted by the attention, per head
    x = np.asarray(xs[0], np.float64)
    wq, wk, wv = (
        np.asarray(p.weight, np.float64) for p in (a.query_proj, a.key_proj, a.value_proj)
    )
    qh, kh, vh = ((x @ w.T).reshape(3, 2, 4).transpose(1, 0, 2) for w in (wq, wk, wv))
    scores = qh @ kh.transpose(0, 2, 1) / 2.0  # sqrt(head size 4)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    read = (weights @ vh).transpose(1, 0, 2).reshape(3, 8)
    np.testing.assert_allclose(obs.activations["attn.value_proj"][0], read, rtol=1e-4, atol=1e-5)


class FusedQKV(eqx.Module):
    qkv: eqx.nn.Linear
    proj: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 3)
        self.qkv = eqx.nn.Linear(8, 24, key=k[0])
        self.proj = eqx.nn.Linear(8, 8, key=k[1])
        self.head = eqx.nn.Linear(8, 1, key=k[2])

    def __call__(self, x):
        q, k, v = jnp.split(jax.vmap(self.qkv)(x), 3, axis=-1)
        q, k, v = (t.reshape(3, 2, 4).transpose(1, 0, 2) for t in (q, k, v))
        a = jax.nn.softmax(q @ k.transpose(0, 2, 1) / 2.0, axis=-1)
        return self.head(jnp.mean(jax.vmap(self.proj)((a @ v).transpose(1, 0, 2).reshape(3, 8)), 0))


def test_a_fused_projection_splits_into_query_key_and_value_groups():
    anatomy = ns.anatomy(draw(FusedQKV, 0), jnp.zeros((3, 8)))
    q, k, v, proj, _ = anatomy
    assert (q.name, k.name, v.name) == ("qkv:query", "qkv:key", "qkv:value")
    for group, start in ((q, 0), (k, 8), (v, 16)):
        assert_owners(
            owners(group, "incoming"),
            {".qkv.weight": rows(8, (24, 8), start), ".qkv.bias": rows(8, (24,), start)},
        )
    assert_owners(owners(v, "outgoing"), {".proj.weight": cols(8, (8, 8))})
    assert_owners(
        owners(q, "outgoing"), {".qkv.weight": rows(8, (24, 8), 8), ".qkv.bias": rows(8, (24,), 8)}
    )
    assert proj.resettable and not v.paired_with and v.resettable


class SwiGLU(eqx.Module):
    inp: eqx.nn.Linear
    up: eqx.nn.Linear
    gate: eqx.nn.Linear | None
    down: eqx.nn.Linear

    def __init__(self, fused: bool, key):
        k = jax.random.split(key, 4)
        self.inp = eqx.nn.Linear(3, 4, key=k[0])
        self.up = eqx.nn.Linear(4, 10 if fused else 5, key=k[1])
        self.gate = None if fused else eqx.nn.Linear(4, 5, key=k[2])
        self.down = eqx.nn.Linear(5, 2, key=k[3])

    def __call__(self, x):
        h = jax.nn.relu(self.inp(x))
        if self.gate is None:
            g, u = jnp.split(self.up(h), 2)
        else:
            g, u = self.gate(h), self.up(h)
        return self.down(jax.nn.silu(g) * u)


def test_gated_units_are_one_unit_whether_the_projection_is_fused_or_not():
    fused = ns.anatomy(draw(lambda k: SwiGLU(True, k), 0), jnp.zeros(3))
    unit = fused["up"]
    assert unit.unit_shape == (5,) and unit.resettable
    both = np.tile(np.arange(5), 2)  # unit i owns the gate row i and the up row 5 + i
    assert_owners(
        owners(unit, "incoming"),
        {".up.weight": np.broadcast_to(both[:, None], (10, 4)), ".up.bias": both},
    )
    assert_owners(owners(unit, "outgoing"), {".down.weight": cols(5, (2, 5))})
    apart = ns.anatomy(draw(lambda k: SwiGLU(False, k), 0), jnp.zeros(3))
    merged = apart["gate+up"]  # named after both layers, the first one called first
    assert apart.names == ("inp", "gate+up", "down") and not merged.shared
    assert set(owners(merged, "incoming")) == {
        ".up.weight",
        ".up.bias",
        ".gate.weight",
        ".gate.bias",
    }
    assert_owners(owners(merged, "outgoing"), {".down.weight": cols(5, (2, 5))})


class Twice(eqx.Module):
    inp: eqx.nn.Linear
    mid: eqx.nn.Linear
    out: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 3)
        self.inp = eqx.nn.Linear(3, 4, key=k[0])
        self.mid = eqx.nn.Linear(4, 4, key=k[1])
        self.out = eqx.nn.Linear(4, 2, key=k[2])

    def __call__(self, x):
        h = jax.nn.relu(self.mid(jax.nn.relu(self.inp(x))))
        return self.out(jnp.tanh(self.mid(h)))


def test_a_layer_called_twice_is_one_group_observed_at_both_call_sites():
    model = draw(Twice, 0)
    anatomy = ns.anatomy(model, jnp.zeros(3))
    assert anatomy.names == ("inp", "mid", "out")
    mid = anatomy["mid"]
    assert_owners(
        owners(mid, "incoming"), {".mid.weight": rows(4, (4, 4)), ".mid.bias": np.arange(4)}
    )
    # its units are read by itself (second call) and by the output layer
    assert_owners(
        owners(mid, "outgoing"), {".mid.weight": cols(4, (4, 4)), ".out.weight": cols(4, (2, 4))}
    )
    xs = batch(jax.random.key(3), 5, 3)
    _, obs = ns.observe(anatomy, model, jnp.sum, xs)
    first = jax.nn.relu(jax.vmap(model.mid)(jax.nn.relu(jax.vmap(model.inp)(xs))))
    second = jnp.tanh(jax.vmap(model.mid)(first))
    got = obs.activations["mid"]
    assert got.shape == (5, 2, 4)  # positions: one per call site
    np.testing.assert_allclose(got[:, 0], first, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[:, 1], second, rtol=1e-5, atol=1e-6)


class GRUHead(eqx.Module):
    cell: eqx.nn.GRUCell
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.cell = eqx.nn.GRUCell(3, 5, key=k1)
        self.head = eqx.nn.Linear(5, 2, key=k2)

    def __call__(self, xs):
        h, _ = jax.lax.scan(lambda h, x: (self.cell(x, h), None), jnp.zeros(5), xs)
        return self.head(jnp.tanh(h))


def test_a_scanned_gru_is_one_group_of_hidden_units_observed_at_every_step():
    model = draw(GRUHead, 0)
    anatomy = ns.anatomy(model, jnp.zeros((4, 3)))
    cell, head = anatomy
    assert cell.name == "cell.weight_ih+cell.weight_hh" and cell.unit_shape == (5,)
    assert cell.resettable and not cell.shared and head.output
    gates = np.tile(np.arange(5), 3)  # unit j: the reset, update and candidate rows j, 5+j, 10+j
    assert_owners(
        owners(cell, "incoming"),
        {
            ".cell.weight_ih": np.broadcast_to(gates[:, None], (15, 3)),
            ".cell.weight_hh": np.broadcast_to(gates[:, None], (15, 5)),
            ".cell.bias": gates,
            ".cell.bias_n": np.arange(5),
        },
    )
    # the hidden state j feeds every gate through column j, and the head through column j
    assert_owners(
        owners(cell, "outgoing"),
        {".cell.weight_hh": cols(5, (15, 5)), ".head.weight": cols(5, (2, 5))},
    )
    xs = batch(jax.random.key(4), 2, 4, 3)
    _, obs = ns.observe(anatomy, model, jnp.sum, xs)
    steps = []
    h = jnp.zeros((2, 5))
    for t in range(4):
        h = jax.vmap(model.cell)(xs[:, t], h)
        steps.append(h)
    got = obs.activations[cell.name]
    assert got.shape == (2, 4, 5)  # positions: the scan's four iterations
    np.testing.assert_allclose(got, jnp.stack(steps, 1), rtol=1e-5, atol=1e-6)


class LSTMHead(eqx.Module):
    cell: eqx.nn.LSTMCell
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.cell = eqx.nn.LSTMCell(3, 5, key=k1)
        self.head = eqx.nn.Linear(5, 2, key=k2)

    def __call__(self, xs):
        def step(hc, x):
            return self.cell(x, hc), None

        (h, _), _ = jax.lax.scan(step, (jnp.zeros(5), jnp.zeros(5)), xs)
        return self.head(h)


def test_a_scanned_lstm_owns_its_bias_added_after_both_projections():
    """Equinox's LSTMCell adds one bias to `W x + U h`: the bias rows of the four gates of
    unit j (j, 5+j, 10+j, 15+j) are its incoming entries, like the two weights' rows."""
    anatomy = ns.anatomy(draw(LSTMHead, 0), jnp.zeros((4, 3)))
    cell, head = anatomy
    assert cell.unit_shape == (5,) and head.output
    gates = np.tile(np.arange(5), 4)  # input, forget, cell and output gates of unit j
    assert_owners(
        owners(cell, "incoming"),
        {
            ".cell.weight_ih": np.broadcast_to(gates[:, None], (20, 3)),
            ".cell.weight_hh": np.broadcast_to(gates[:, None], (20, 5)),
            ".cell.bias": gates,
        },
    )
    assert not anatomy.ungrouped


def test_mlp_with_scanned_hidden_layers_gives_one_group_per_stack():
    mlp = draw(lambda k: eqx.nn.MLP(3, 2, 4, 3, scan=True, key=k), 0)
    anatomy = ns.anatomy(mlp, jnp.zeros(3))
    first, stack, out = anatomy
    assert stack.name == "layers[1]" and stack.unit_shape == (2, 4) and stack.resettable
    unit = np.arange(8).reshape(2, 4)
    assert_owners(
        owners(stack, "incoming"),
        {
            ".layers[1].weight": np.broadcast_to(unit[:, :, None], (2, 4, 4)),
            ".layers[1].bias": unit,
        },
    )
    later = np.full((2, 4, 4), -1)
    later[1] = unit[0][None, :]
    assert_owners(
        owners(stack, "outgoing"),
        {".layers[1].weight": later, ".layers[2].weight": unit[1][None, :].repeat(2, 0)},
    )
    early = np.full((2, 4, 4), -1)
    early[0] = np.arange(4)[None, :]
    assert_owners(owners(first, "outgoing"), {".layers[1].weight": early})
    assert out.output


class Tokens(eqx.Module):
    emb: eqx.nn.Embedding
    lin: eqx.nn.Linear
    out: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 3)
        self.emb = eqx.nn.Embedding(7, 4, key=k[0])
        self.lin = eqx.nn.Linear(4, 5, key=k[1])
        self.out = eqx.nn.Linear(5, 1, key=k[2])

    def __call__(self, ids, pick):
        h = jax.nn.relu(jax.vmap(self.lin)(jax.vmap(self.emb)(ids)))
        return self.out(h[pick])  # a token chosen by the input: every token has the same units


def test_an_embedding_table_is_a_layer_and_tokens_picked_by_the_input_keep_their_units():
    anatomy = ns.anatomy(draw(Tokens, 0), jnp.array([1, 2, 3]), jnp.int32(1))
    emb, lin, _ = anatomy
    assert emb.unit_shape == (4,) and emb.layer_type is eqx.nn.Embedding
    assert_owners(owners(emb, "incoming"), {".emb.weight": cols(4, (7, 4))})
    assert_owners(owners(emb, "outgoing"), {".lin.weight": cols(4, (5, 4))})
    assert_owners(owners(lin, "outgoing"), {".out.weight": cols(5, (1, 5))})


class BN(eqx.Module):
    conv: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    fc: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 3, 3, key=k1)
        self.bn = eqx.nn.BatchNorm(3, "batch", inference=True, mode="batch")
        self.fc = eqx.nn.Linear(3, 1, key=k2)

    def __call__(self, x, state):
        h, state = self.bn(self.conv(x), state)
        return self.fc(jnp.mean(jax.nn.relu(h), axis=(1, 2))), state


def test_batchnorm_in_inference_mode_with_its_state_as_an_example_input():
    model, state = eqx.nn.make_with_state(BN)(jax.random.key(0))
    anatomy = ns.anatomy(model, jnp.zeros((1, 5, 5)), state, fn=lambda m, x, s: m(x, s)[0])
    conv, fc = anatomy
    assert fc.output
    assert_owners(owners(conv, "per_unit"), {".bn.weight": np.arange(3), ".bn.bias": np.arange(3)})
    assert_owners(owners(conv, "outgoing"), {".fc.weight": cols(3, (1, 3))})
    assert conv.resettable and not conv.normalized  # running statistics do not mix the units


class Dropped(eqx.Module):
    l1: eqx.nn.Linear
    l2: eqx.nn.Linear

    def __call__(self, x, key):
        return self.l2(eqx.nn.Dropout(0.5)(jax.nn.relu(self.l1(x)), key=key))


def test_dropout_in_training_mode_with_a_key_passed_or_closed_over():
    model = Dropped(
        eqx.nn.Linear(3, 6, key=jax.random.key(0)), eqx.nn.Linear(6, 1, key=jax.random.key(1))
    )
    key = jax.random.key(7)
    passed = ns.anatomy(model, jnp.zeros(3), key)
    closed = ns.anatomy(model, jnp.zeros(3), fn=lambda m, x: m(x, key))
    for anatomy in (passed, closed):
        assert_owners(owners(anatomy["l1"], "outgoing"), {".l2.weight": cols(6, (1, 6))})
        assert anatomy["l1"].resettable and not anatomy["l1"].normalized


class Flow(eqx.Module):
    a: eqx.nn.Linear
    b: eqx.nn.Linear
    c: eqx.nn.Linear
    d: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 4)
        self.a, self.b = eqx.nn.Linear(3, 5, key=k[0]), eqx.nn.Linear(5, 5, key=k[1])
        self.c, self.d = eqx.nn.Linear(5, 5, key=k[2]), eqx.nn.Linear(5, 1, key=k[3])

    def __call__(self, x):
        @jax.custom_vjp
        def act(z):
            return jnp.tanh(z)

        act.defvjp(lambda z: (jnp.tanh(z), z), lambda z, g: (g * (1 - jnp.tanh(z) ** 2),))
        h = jax.jit(lambda x: act(self.a(x)))(x)
        h = jax.checkpoint(lambda h: jax.nn.relu(self.b(h)))(h)
        h = jax.lax.cond(
            x[0] > 0, lambda h: jax.nn.relu(self.c(h)), lambda h: jnp.tanh(self.c(h)), h
        )
        return self.d(h)


def test_nested_jit_custom_vjp_remat_and_cond():
    anatomy = ns.anatomy(draw(Flow, 0), jnp.ones(3))
    a, b, c, d = anatomy
    for group, consumer in ((a, ".b.weight"), (b, ".c.weight"), (c, ".d.weight")):
        assert_owners(
            owners(group, "outgoing"), {consumer: cols(5, (5 if consumer != ".d.weight" else 1, 5))}
        )
    assert d.output and c.resettable
    assert [g.name for g in anatomy.observed] == ["a", "b", "d"]
    assert anatomy.unobserved == {"c": "inside a `cond` branch"}


class GatedFreeze(eqx.Module):
    """A weight chosen by a parameter's comparison: `where(gate > 0, stop_gradient(W), W)`
    (a frozen-or-trainable switch), and a per-unit mask drawn from a parameter's sign."""

    inp: eqx.nn.Linear
    out: eqx.nn.Linear
    gate: jax.Array
    keep: jax.Array

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.inp = eqx.nn.Linear(3, 4, key=k1)
        self.out = eqx.nn.Linear(4, 2, key=k2)
        self.gate = jnp.ones(())
        self.keep = jax.random.normal(k3, (4,))

    def __call__(self, x):
        h = jax.nn.relu(self.inp(x)) * (self.keep > 0).astype(x.dtype)
        w = jnp.where(self.gate > 0, jax.lax.stop_gradient(self.out.weight), self.out.weight)
        return w @ h + self.out.bias


def test_parameters_read_only_through_comparisons_choose_values_and_own_no_entries():
    """A comparison of parameters carries no gradient: the weight a select picks keeps its
    owners, and the parameters compared are in no group (listed as such), never an owner."""
    anatomy = ns.anatomy(GatedFreeze(jax.random.key(0)), jnp.zeros(3))
    assert anatomy.names == ("inp", "out")
    inp = anatomy["inp"]
    assert_owners(
        owners(inp, "incoming"), {".inp.weight": rows(4, (4, 3)), ".inp.bias": np.arange(4)}
    )
    assert_owners(owners(inp, "outgoing"), {".out.weight": cols(4, (2, 4))})
    assert set(anatomy.ungrouped) == {".gate", ".keep"}
