"""Small architectures assembled from the pieces users combine: a front end for the input
(a convolution with pooling, an attention block, a linear attention with keys softmaxed over
positions, a scanned recurrent cell, token mixing, a class token before an attention,
grouped-query attention, residual blocks stacked and applied by a scan) and
one or two body pieces (dense, LayerNorm residual block, concatenation, gated unit, FiLM
conditioning, a layer called twice), optionally stacked as a vmapped ensemble."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np

WIDTH = 6
FRONTS = ("vec", "conv-max", "conv-avg", "attn", "linattn", "gru", "mix", "cls", "gqa", "scanres")
PIECES = ("dense", "lnres", "concat", "glu", "film", "twice")


class ConvPool(eqx.Module):
    conv: eqx.nn.Conv2d
    pool: str = eqx.field(static=True)

    def __init__(self, pool: str, key):
        self.conv = eqx.nn.Conv2d(1, 3, 3, padding=1, key=key)
        self.pool = pool

    def __call__(self, x):
        h = jax.nn.relu(self.conv(x))
        pool = eqx.nn.MaxPool2d(2, 2) if self.pool == "max" else eqx.nn.AvgPool2d(2, 2)
        return pool(h).reshape(-1)


class AttnBlock(eqx.Module):
    ln1: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    ln2: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear

    def __init__(self, d: int, key):
        k = jax.random.split(key, 3)
        self.ln1, self.ln2 = eqx.nn.LayerNorm(d), eqx.nn.LayerNorm(d)
        self.attn = eqx.nn.MultiheadAttention(2, d, key=k[0])
        self.fc1 = eqx.nn.Linear(d, 2 * d, key=k[1])
        self.fc2 = eqx.nn.Linear(2 * d, d, key=k[2])

    def __call__(self, x):
        h = jax.vmap(self.ln1)(x)
        x = x + self.attn(h, h, h)
        h = jax.vmap(self.ln2)(x)
        x = x + jax.vmap(lambda t: self.fc2(jax.nn.gelu(self.fc1(t))))(h)
        return jnp.mean(x, axis=0)


class LinAttn(eqx.Module):
    """A U-Net's linear attention: keys softmaxed over positions, so a zeroed key row is 1/n
    there, not 0 (zeroing a query unit's partner does not remove its term)."""

    qkv: eqx.nn.Linear
    out: eqx.nn.Linear

    def __call__(self, x):
        q, k, v = jnp.split(jax.vmap(self.qkv)(x), 3, axis=-1)
        return jnp.mean(jax.vmap(self.out)(q @ (jax.nn.softmax(k, axis=0).T @ v)), axis=0)


class Recurrent(eqx.Module):
    cell: eqx.nn.GRUCell

    def __call__(self, xs):
        h0 = jnp.zeros(self.cell.hidden_size)
        return jax.lax.scan(lambda h, x: (self.cell(x, h), None), h0, xs)[0]


class TokenMix(eqx.Module):
    ln: eqx.nn.LayerNorm
    t1: eqx.nn.Linear
    t2: eqx.nn.Linear

    def __init__(self, tokens: int, d: int, key):
        k1, k2 = jax.random.split(key)
        self.ln = eqx.nn.LayerNorm(d)
        self.t1 = eqx.nn.Linear(tokens, 5, key=k1)
        self.t2 = eqx.nn.Linear(5, tokens, key=k2)

    def __call__(self, x):
        h = jax.vmap(self.ln)(x)
        mixed = jax.vmap(lambda c: self.t2(jax.nn.gelu(self.t1(c))), in_axes=1, out_axes=1)(h)
        return jnp.mean(x + mixed, axis=0)


class ClassToken(eqx.Module):
    """A class token concatenated before the embedded tokens, an attention, the class position."""

    emb: eqx.nn.Linear
    cls: jax.Array
    attn: eqx.nn.MultiheadAttention

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.emb, self.cls = eqx.nn.Linear(4, 4, key=k1), jnp.ones((1, 4))
        self.attn = eqx.nn.MultiheadAttention(2, 4, key=k2)

    def __call__(self, x):
        h = jnp.concatenate([self.cls, jax.vmap(self.emb)(x)])
        return self.attn(h, h, h)[0]


class GroupedQuery(eqx.Module):
    """Two query heads share one key/value head (head size 2)."""

    q: eqx.nn.Linear
    kv: eqx.nn.Linear

    def __call__(self, x):
        n = x.shape[0]
        q = jax.vmap(self.q)(x).reshape(n, 2, 2)
        k, v = jnp.split(jax.vmap(self.kv)(x).reshape(n, 1, 4), 2, axis=-1)
        k, v = jnp.repeat(k, 2, axis=1), jnp.repeat(v, 2, axis=1)
        w = jax.nn.softmax(jnp.einsum("qhd,khd->hqk", q, k), axis=-1)
        return jnp.einsum("hqk,khd->qhd", w, v).reshape(n, 4).mean(0)


class ScannedResidual(eqx.Module):
    """Two residual MLP blocks stacked by filter_vmap and applied by lax.scan."""

    inp: eqx.nn.Linear
    blocks: eqx.nn.MLP

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.inp = eqx.nn.Linear(4, 4, key=k1)
        make = lambda k: eqx.nn.MLP(4, 4, 5, 1, key=k)
        self.blocks = eqx.filter_vmap(make)(jax.random.split(k2, 2))

    def __call__(self, x):
        params, static = eqx.partition(self.blocks, eqx.is_array)
        step = lambda h, p: (h + eqx.combine(p, static)(h), None)
        return jax.lax.scan(step, self.inp(x), params)[0]


class Piece(eqx.Module):
    kind: str = eqx.field(static=True)
    a: eqx.nn.Linear
    b: eqx.nn.Linear | None
    norm1: eqx.nn.LayerNorm | None
    norm2: eqx.nn.LayerNorm | None

    def __init__(self, kind: str, n_in: int, key):
        k1, k2 = jax.random.split(key)
        self.kind = kind
        self.norm1 = self.norm2 = None
        self.b = None
        if kind == "dense":
            self.a = eqx.nn.Linear(n_in, WIDTH, key=k1)
        elif kind == "lnres":
            self.a = eqx.nn.Linear(n_in, WIDTH, key=k1)
            self.b = eqx.nn.Linear(WIDTH, WIDTH, key=k2)
            self.norm1, self.norm2 = eqx.nn.LayerNorm(WIDTH), eqx.nn.LayerNorm(WIDTH)
        elif kind == "concat":
            self.a = eqx.nn.Linear(n_in, WIDTH // 2, key=k1)
            self.b = eqx.nn.Linear(n_in, WIDTH - WIDTH // 2, key=k2)
        elif kind == "glu":
            self.a = eqx.nn.Linear(n_in, 2 * WIDTH, key=k1)
        elif kind == "film":  # b: the scale and shift, from the first half of the input
            self.a = eqx.nn.Linear(n_in, WIDTH, key=k1)
            self.b = eqx.nn.Linear(n_in // 2, 2 * WIDTH, key=k2)
        else:  # "twice": a square layer applied twice
            self.a = eqx.nn.Linear(n_in, WIDTH, key=k1)
            self.b = eqx.nn.Linear(WIDTH, WIDTH, key=k2)

    def __call__(self, x):
        if self.kind == "dense":
            return jax.nn.relu(self.a(x))
        if self.kind == "lnres":
            assert self.b is not None and self.norm1 is not None and self.norm2 is not None
            x = jax.nn.relu(self.norm1(self.a(x)))
            return x + self.norm2(self.b(x))
        if self.kind == "concat":
            assert self.b is not None
            return jnp.concatenate([jax.nn.relu(self.a(x)), jnp.tanh(self.b(x))])
        if self.kind == "glu":
            g, u = jnp.split(self.a(x), 2)
            return jax.nn.silu(g) * u
        if self.kind == "film":
            assert self.b is not None
            gamma, beta = jnp.split(self.b(x[: len(x) // 2]), 2)
            return jax.nn.relu(self.a(x)) * (1 + gamma) + beta
        assert self.b is not None
        h = jax.nn.relu(self.a(x))
        return jnp.tanh(self.b(jax.nn.relu(self.b(h))))


class Net(eqx.Module):
    front: eqx.Module | None
    body: list[Piece]
    head: eqx.nn.Linear

    def __call__(self, x):
        h = x if self.front is None else self.front(x)  # type: ignore[operator]
        for piece in self.body:
            h = piece(h)
        return self.head(h)


@dataclasses.dataclass(frozen=True)
class Spec:
    front: str
    body: tuple[str, ...]
    ensemble: bool = False

    def example(self) -> jax.Array:
        if self.front.startswith("conv"):
            return jnp.zeros((1, 6, 6))
        if self.front in ("attn", "linattn", "gru", "mix", "cls", "gqa"):
            return jnp.zeros((3, 4))
        return jnp.zeros(4)


def sequential(spec: Spec) -> set[str]:
    """Groups stacked along a scan's layers: a later layer's units read the earlier ones'
    outputs, so their activations depend on other units' entries of the same group."""
    return {"front.blocks.layers[0]"} if spec.front == "scanres" else set()


def build(spec: Spec, key) -> Net:
    k = jax.random.split(key, 3)
    front, n = None, 4
    if spec.front.startswith("conv"):
        front, n = ConvPool(spec.front[5:], k[0]), 27
    elif spec.front == "attn":
        front = AttnBlock(4, k[0])
    elif spec.front == "linattn":
        front = LinAttn(eqx.nn.Linear(4, 12, key=k[0]), eqx.nn.Linear(4, 4, key=k[1]))
    elif spec.front == "gru":
        front, n = Recurrent(eqx.nn.GRUCell(4, 5, key=k[0])), 5
    elif spec.front == "mix":
        front = TokenMix(3, 4, k[0])
    elif spec.front == "cls":
        front = ClassToken(k[0])
    elif spec.front == "gqa":
        front = GroupedQuery(eqx.nn.Linear(4, 4, key=k[0]), eqx.nn.Linear(4, 4, key=k[1]))
    elif spec.front == "scanres":
        front = ScannedResidual(k[0])
    body = []
    for i, kind in enumerate((*spec.body, "dense")):  # a plain hidden layer before the head
        body.append(Piece(kind, n, jax.random.fold_in(k[2], i)))
        n = WIDTH
    return Net(front, body, eqx.nn.Linear(n, 2, key=k[1]))


def draw(make, seed: int):
    """`make`'s model with its arrays drawn by numpy (N(0, 0.5²)): building it costs no
    compilation, which keeps the property tests fast."""
    shapes = eqx.filter_eval_shape(make, jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return jnp.asarray(0.5 * rng.normal(size=x.shape), x.dtype)
        return x

    return jax.tree_util.tree_map(fill, shapes)


def make(spec: Spec):
    """`(constructor, example, fn)` for `ns.anatomy`."""
    if not spec.ensemble:
        return (lambda key: build(spec, key)), spec.example(), None

    def members(key):
        return eqx.filter_vmap(lambda k: build(spec, k))(jax.random.split(key, 2))

    return members, spec.example(), lambda m, x: eqx.filter_vmap(lambda c: c(x))(m)


#: every combination of a front end and one or two body pieces; ensembles of the plain front
SPECS = st.builds(
    Spec,
    front=st.sampled_from(FRONTS),
    body=st.lists(st.sampled_from(PIECES), min_size=1, max_size=2).map(tuple),
    ensemble=st.booleans(),
).filter(lambda s: not s.ensemble or s.front == "vec")
