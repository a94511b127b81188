"""Larger building blocks: a transformer block, token mixing, linear attention in a U-Net,
normalised weights, a while loop — and the size of what the tracer keeps per value."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neurosurgery as ns
from neurosurgery._anatomy._graph import build_graph
from neurosurgery._anatomy._trace import Tracer

from .archs import draw
from .test_anatomy import assert_owners, cols, owners


class Block(eqx.Module):
    """A ViT-style pre-LN block behind a patch embedding, with stochastic depth."""

    embed: eqx.nn.Linear
    pos: jax.Array
    ln1: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    ln2: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, key, d=8):
        k = jax.random.split(key, 5)
        self.embed, self.pos = eqx.nn.Linear(4, d, key=k[0]), jnp.zeros((3, d))
        self.ln1, self.ln2 = eqx.nn.LayerNorm(d), eqx.nn.LayerNorm(d)
        self.attn = eqx.nn.MultiheadAttention(2, d, key=k[1])
        self.fc1, self.fc2 = eqx.nn.Linear(d, 2 * d, key=k[2]), eqx.nn.Linear(2 * d, d, key=k[3])
        self.head = eqx.nn.Linear(d, 2, key=k[4])

    def __call__(self, x, key):
        x = jax.vmap(self.embed)(x) + self.pos
        h = jax.vmap(self.ln1)(x)
        keep = jax.random.bernoulli(key, 0.8)  # drop the attention branch (stochastic depth)
        x = x + jnp.where(keep, self.attn(h, h, h) / 0.8, 0.0)
        h = jax.vmap(self.ln2)(x)
        x = x + jax.vmap(lambda t: self.fc2(jax.nn.gelu(self.fc1(t))))(h)
        return self.head(jnp.mean(x, axis=0))


def test_transformer_block_stream_attention_and_mlp():
    anatomy = ns.anatomy(draw(Block, 0), jnp.zeros((3, 4)), jax.random.key(0))
    stream = [g.name for g in anatomy.filter(shared=True)]
    assert stream == ["embed", "attn.output_proj", "fc2"]
    assert [g.name for g in anatomy.resettable] == ["attn.value_proj", "fc1"]
    embed, fc1 = anatomy["embed"], anatomy["fc1"]
    # the positional embedding is added to the stream right after the patch embedding
    assert {s.path: s.kind for s in embed.incoming}[".pos"] == "bias"
    assert_owners(
        owners(embed, "incoming"),
        {
            ".embed.weight": np.broadcast_to(np.arange(8)[:, None], (8, 4)),
            ".embed.bias": np.arange(8),
            ".pos": cols(8, (3, 8)),
        },
    )
    # a stream writer owns the parameters of the norms that read the stream after it writes
    assert {s.path for s in anatomy["attn.output_proj"].per_unit} == {".ln2.weight", ".ln2.bias"}
    assert anatomy["fc2"].per_unit == ()
    assert set(owners(embed, "outgoing")) == {
        f".attn.{p}_proj.weight" for p in ("query", "key", "value")
    } | {".fc1.weight", ".head.weight"}
    assert_owners(owners(fc1, "outgoing"), {".fc2.weight": cols(16, (8, 16))})
    assert embed.normalized and not fc1.normalized  # LayerNorm reads the stream


class Mixer(eqx.Module):
    embed: eqx.nn.Linear
    ln: eqx.nn.LayerNorm
    tok1: eqx.nn.Linear
    tok2: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 4)
        self.embed, self.ln = eqx.nn.Linear(3, 6, key=k[0]), eqx.nn.LayerNorm(6)
        self.tok1, self.tok2 = eqx.nn.Linear(4, 5, key=k[1]), eqx.nn.Linear(5, 4, key=k[2])
        self.head = eqx.nn.Linear(6, 2, key=k[3])

    def __call__(self, x):
        x = jax.vmap(self.embed)(x)  # (tokens 4, channels 6)
        h = jax.vmap(self.ln)(x)
        mix = jax.vmap(lambda c: self.tok2(jax.nn.gelu(self.tok1(c))), in_axes=1, out_axes=1)
        return self.head(jnp.mean(x + mix(h), axis=0))


def test_token_mixing_maps_its_own_hidden_units():
    model = draw(Mixer, 0)
    anatomy = ns.anatomy(model, jnp.zeros((4, 3)))
    tok1 = anatomy["tok1"]
    assert tok1.unit_shape == (5,) and tok1.resettable and not tok1.normalized
    assert_owners(
        owners(tok1, "incoming"),
        {
            ".tok1.weight": np.broadcast_to(np.arange(5)[:, None], (5, 4)),
            ".tok1.bias": np.arange(5),
        },
    )
    assert_owners(owners(tok1, "outgoing"), {".tok2.weight": cols(5, (4, 5))})
    # the token MLP's outputs write the stream along the token axis: shared with the channels
    assert anatomy["tok2"].shared and anatomy["embed"].shared
    xs = jax.random.normal(jax.random.key(1), (2, 4, 3))
    _, obs = ns.observe(anatomy, model, jnp.sum, xs)
    h = jax.vmap(jax.vmap(model.ln))(jax.vmap(jax.vmap(model.embed))(xs))  # (2, 4, 6)
    hidden = jax.nn.gelu(jnp.einsum("btc,ut->bcu", h, model.tok1.weight) + model.tok1.bias)
    # positions: the six channels the token MLP is applied to
    np.testing.assert_allclose(obs.activations["tok1"], hidden, rtol=1e-4, atol=1e-5)


class LinearAttention(eqx.Module):
    down: eqx.nn.Conv2d
    qkv: eqx.nn.Conv2d
    out: eqx.nn.Conv2d
    up: eqx.nn.ConvTranspose2d
    final: eqx.nn.Conv2d

    def __init__(self, key):
        k = jax.random.split(key, 5)
        self.down = eqx.nn.Conv2d(1, 4, 3, stride=2, padding=1, key=k[0])
        self.qkv = eqx.nn.Conv2d(4, 12, 1, use_bias=False, key=k[1])
        self.out = eqx.nn.Conv2d(4, 4, 1, key=k[2])
        self.up = eqx.nn.ConvTranspose2d(4, 2, 2, stride=2, key=k[3])
        self.final = eqx.nn.Conv2d(3, 1, 1, key=k[4])

    def __call__(self, x):
        h = jax.nn.silu(self.down(x))  # (4, 4, 4)
        q, k, v = (t.reshape(2, 2, 16) for t in jnp.split(self.qkv(h), 3))
        q, k = jax.nn.softmax(q, axis=-2), jax.nn.softmax(k, axis=-1)
        context = jnp.einsum("hdn,hen->hde", k, v)
        attended = jnp.einsum("hde,hdn->hen", context, q).reshape(4, 4, 4)
        h = h + self.out(attended)
        return self.final(jnp.concatenate([jax.nn.silu(self.up(h)), x]))


def test_linear_attention_in_a_unet():
    anatomy = ns.anatomy(draw(LinearAttention, 0), jnp.zeros((1, 8, 8)))
    q, k, v = anatomy["qkv:query"], anatomy["qkv:key"], anatomy["qkv:value"]
    kernel = lambda start: np.broadcast_to(
        np.where((np.arange(12) >= start) & (np.arange(12) < start + 4), np.arange(12) - start, -1)[
            :, None, None, None
        ],
        (12, 4, 1, 1),
    )
    assert_owners(owners(q, "incoming"), {".qkv.weight": kernel(0)})
    assert_owners(owners(k, "incoming"), {".qkv.weight": kernel(4)})
    assert_owners(owners(q, "outgoing"), {".qkv.weight": kernel(4)})
    assert_owners(
        owners(v, "outgoing"),
        {".out.weight": np.broadcast_to(np.arange(4)[None, :, None, None], (4, 4, 1, 1))},
    )
    assert q.normalized  # the queries' softmax runs over their own units
    assert anatomy["down"].shared and anatomy["out"].shared and anatomy["up"].resettable


class Normalised(eqx.Module):
    layer: eqx.Module
    out: eqx.nn.Linear

    def __call__(self, x):
        return self.out(jax.nn.relu(self.layer(x)))


def test_a_norm_of_the_whole_weight_marks_the_group_and_a_norm_per_unit_does_not():
    lin = eqx.nn.Linear(3, 5, key=jax.random.key(0))
    out = eqx.nn.Linear(5, 1, key=jax.random.key(1))
    sn, state = eqx.nn.make_with_state(eqx.nn.SpectralNorm)(
        lin, "weight", inference=True, key=jax.random.key(2)
    )

    class WithState(Normalised):
        def __call__(self, x):  # the power-iteration state closed over, in inference mode
            return self.out(jax.nn.relu(self.layer(x, state)[0]))  # type: ignore[call-arg]

    spectral = ns.anatomy(WithState(sn, out), jnp.zeros(3))
    per_row = ns.anatomy(Normalised(eqx.nn.WeightNorm(lin), out), jnp.zeros(3))
    sigma = spectral["layer.layer"]
    assert sigma.normalized  # σ reads every row: re-drawing one row rescales all units
    wn = per_row["layer.layer"]
    assert not wn.normalized and wn.resettable  # each row divided by its own norm
    # weight norm's magnitudes scale each unit: one entry per unit, drawn as scales
    assert_owners(
        owners(wn, "incoming"),
        {
            ".layer.layer.weight": np.broadcast_to(np.arange(5)[:, None], (5, 3)),
            ".layer.layer.bias": np.arange(5),
            ".layer.g": np.arange(5)[:, None],
        },
    )


class Iterated(eqx.Module):
    a: eqx.nn.Linear
    r: eqx.nn.Linear
    d: eqx.nn.Linear

    def __call__(self, x):
        h = jax.nn.relu(self.a(x))
        body = lambda c: (c[0] + 1, jnp.tanh(self.r(c[1])))
        return self.d(jax.lax.while_loop(lambda c: c[0] < 3, body, (0, h))[1])


def test_a_while_loop_maps_its_groups_but_cannot_be_observed():
    k = jax.random.split(jax.random.key(0), 3)
    model = Iterated(
        eqx.nn.Linear(3, 4, key=k[0]), eqx.nn.Linear(4, 4, key=k[1]), eqx.nn.Linear(4, 1, key=k[2])
    )
    anatomy = ns.anatomy(model, jnp.ones(3))
    a, r, _ = anatomy
    assert_owners(
        owners(r, "outgoing"), {".r.weight": cols(4, (4, 4)), ".d.weight": cols(4, (1, 4))}
    )
    # after zero or more iterations the carry holds either layer's units: both are shared
    assert a.shared_with == ("r",) and r.shared_with == ("a",)
    assert anatomy.unobserved == {"r": "inside a `while` loop"}
    with pytest.raises(ns.AnatomyError, match=r"while_loop.*cannot differentiate.*lax\.scan"):
        ns.observe(anatomy, model, jnp.sum, jnp.ones((2, 3)))


def test_labels_stay_compact_along_positions():
    """Following a conv net costs what its channels cost, whatever the image size."""

    class Net(eqx.Module):
        c1: eqx.nn.Conv2d
        c2: eqx.nn.Conv2d
        fc: eqx.nn.Linear

        def __call__(self, x):
            h = eqx.nn.MaxPool2d(2, 2)(jax.nn.relu(self.c1(x)))
            h = jax.nn.relu(self.c2(h))
            return self.fc(jnp.mean(h, axis=(1, 2)))

    net = Net(
        eqx.nn.Conv2d(3, 8, 3, padding=1, key=jax.random.key(0)),
        eqx.nn.Conv2d(8, 16, 3, padding=1, key=jax.random.key(1)),
        eqx.nn.Linear(16, 2, key=jax.random.key(2)),
    )
    params, static = eqx.partition(net, eqx.is_array)
    leaves, tree = jax.tree_util.tree_flatten(params)
    x = jax.ShapeDtypeStruct((3, 512, 512), jnp.float32)  # 786k input elements

    def call(*flat):
        return eqx.combine(jax.tree_util.tree_unflatten(tree, flat[:-1]), static)(flat[-1])

    graph = build_graph(call, [*leaves, x])
    shapes = [tuple(leaf.shape) for leaf in leaves]
    offsets = list(np.cumsum([0] + [int(np.prod(s)) for s in shapes])[:-1])
    tracer = Tracer(graph, [int(o) for o in offsets], shapes, [str(i) for i in range(len(leaves))])
    tracer.run()
    kept = [f.size for v in tracer.values if v is not None for f in v.units]
    assert kept and max(kept) <= 16  # one label per channel, none per pixel


class Repeats(eqx.Module):
    """Hidden units concatenated with copies of two of them before the output layer."""

    a: eqx.nn.Linear
    o: eqx.nn.Linear

    def __call__(self, x):
        h = jax.nn.relu(self.a(x))
        return self.o(jnp.concatenate([h, h[:2]]))


def test_units_repeated_after_their_nonlinearity_are_read_before_the_copies():
    """Units 0 and 1 reach the output layer twice: each owns both of its columns of the output
    weight, and its activation and gradient are read at the ReLU's output, once per unit (the
    gradient sums both uses), compared with jax.grad by hand."""
    make = lambda k: Repeats(
        eqx.nn.Linear(3, 8, key=k), eqx.nn.Linear(10, 2, key=jax.random.fold_in(k, 1))
    )
    model = make(jax.random.key(0))
    anatomy = ns.anatomy(model, jnp.zeros(3))
    (out,) = anatomy["a"].outgoing
    units = np.asarray(out.units).reshape(-1)
    assert units.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]
    xs = jax.random.normal(jax.random.key(1), (5, 3))
    loss = lambda y: jnp.sum(y**2)
    _, obs = ns.observe(anatomy, model, loss, xs)
    h = jax.nn.relu(jax.vmap(model.a)(xs))
    np.testing.assert_allclose(obs.activations["a"][:, 0], h, rtol=1e-6)
    # ∂L/∂h per sample: the output layer reads h_0 and h_1 twice
    by_hand = jax.vmap(jax.grad(lambda h: loss(model.o(jnp.concatenate([h, h[:2]])))))(h)
    np.testing.assert_allclose(obs.grads("activation")["a"][:, 0], by_hand, rtol=1e-5, atol=1e-7)
    # resetting unit 0 zeroes both of its columns and nothing else of the output layer
    reset = ns.reset(anatomy, model, {"a": jnp.arange(8) == 0}, jax.random.key(2), init=make)
    w = np.asarray(model.o.weight).copy()
    w[:, [0, 8]] = 0.0
    np.testing.assert_array_equal(reset.model.o.weight, w)
    zeroed = eqx.tree_at(lambda m: m.o.weight, model, jnp.asarray(w))
    np.testing.assert_allclose(jax.vmap(reset.model)(xs), jax.vmap(zeroed)(xs), rtol=1e-6)


class RepeatsBefore(Repeats):
    def __call__(self, x):
        z = self.a(x)
        return self.o(jax.nn.relu(jnp.concatenate([z, z[:2]])))


def test_units_repeated_before_their_nonlinearity_are_refused_by_name():
    """Copies made before the ReLU are separate activations of one unit: no value holds each
    activation once, and the error says so, naming the operation, the counts and the ways out."""
    model = RepeatsBefore(
        eqx.nn.Linear(3, 8, key=jax.random.key(0)), eqx.nn.Linear(10, 2, key=jax.random.key(1))
    )
    match = (
        r"units produced by `\.a\.weight` cannot be read one per unit at `max` at "
        r"\S*test_anatomy_blocks\.py:\d+ .*units 0, 1 twice; units 2, 3, 4, 5, \.\.\. once"
        r".*__neuron_groups__.*fn="
    )
    with pytest.raises(ns.AnatomyError, match=match):
        ns.anatomy(model, jnp.zeros(3))
