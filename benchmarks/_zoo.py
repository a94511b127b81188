"""One small model per architecture family, as users write them, for the anatomy table.

Each entry builds `(model, example_args, fn)`; `fn` is None for `model(*example_args)`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _resnet import ResNet


class Seq(eqx.Module):
    """`layers` applied in turn, with `acts[i]` after layer i."""

    layers: list
    acts: tuple = eqx.field(static=True)

    def __call__(self, x):
        for layer, act in zip(self.layers, self.acts, strict=True):
            x = act(layer(x))
        return x


def mlp(k):
    return eqx.nn.MLP(8, 2, 32, 2, key=k), (jnp.zeros(8),), None


class CNN(eqx.Module):
    """The MNIST CNN layout: conv → max-pool → conv → avg-pool → flatten → MLP."""

    c1: eqx.nn.Conv2d
    c2: eqx.nn.Conv2d
    fc: eqx.nn.Linear
    out: eqx.nn.Linear

    def __call__(self, x):
        x = eqx.nn.MaxPool2d(2, 2)(jax.nn.relu(self.c1(x)))
        x = eqx.nn.AvgPool2d(2, 2)(jax.nn.relu(self.c2(x)))
        return self.out(jax.nn.relu(self.fc(x.reshape(-1))))


def cnn(k):
    k = jax.random.split(k, 4)
    model = CNN(
        eqx.nn.Conv2d(1, 4, 3, padding=1, key=k[0]),
        eqx.nn.Conv2d(4, 8, 3, padding=1, key=k[1]),
        eqx.nn.Linear(8 * 7 * 7, 16, key=k[2]),
        eqx.nn.Linear(16, 10, key=k[3]),
    )
    return model, (jnp.zeros((1, 28, 28)),), None


def resnet(k):
    model, state = eqx.nn.make_with_state(ResNet)(layers=(1, 1, 1, 1), classes=10, key=k)
    return model, (jnp.zeros((3, 32, 32)), state), lambda m, x, s: m(x, s)[0]


class Encoder(eqx.Module):
    """A BERT-style post-LN encoder layer over token ids, or a ViT-style pre-LN block over
    patches with stochastic depth (a key drops the attention branch)."""

    embed: eqx.Module
    pos: jax.Array
    ln1: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    ln2: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    head: eqx.nn.Linear
    post_ln: bool = eqx.field(static=True)

    def __init__(self, post_ln: bool, key, d=16, tokens=6):
        k = jax.random.split(key, 6)
        self.post_ln = post_ln
        self.embed = (
            eqx.nn.Embedding(50, d, key=k[0]) if post_ln else eqx.nn.Linear(12, d, key=k[0])
        )
        self.pos = 0.02 * jax.random.normal(k[1], (tokens, d))
        self.ln1, self.ln2 = eqx.nn.LayerNorm(d), eqx.nn.LayerNorm(d)
        self.attn = eqx.nn.MultiheadAttention(4, d, key=k[2])
        self.fc1, self.fc2 = eqx.nn.Linear(d, 4 * d, key=k[3]), eqx.nn.Linear(4 * d, d, key=k[4])
        self.head = eqx.nn.Linear(d, 2, key=k[5])

    def mlp(self, x):
        return jax.vmap(lambda t: self.fc2(jax.nn.gelu(self.fc1(t))))(x)

    def __call__(self, x, extra):
        x = jax.vmap(self.embed)(x) + self.pos  # type: ignore[arg-type]
        if self.post_ln:  # BERT: extra is the attention mask
            x = jax.vmap(self.ln1)(x + self.attn(x, x, x, mask=extra))
            x = jax.vmap(self.ln2)(x + self.mlp(x))
            return self.head(x[0])
        keep = jax.random.bernoulli(extra, 0.9)  # ViT: extra is a key, stochastic depth
        h = jax.vmap(self.ln1)(x)
        x = x + jnp.where(keep, self.attn(h, h, h) / 0.9, 0.0)
        x = x + self.mlp(jax.vmap(self.ln2)(x))
        return self.head(jnp.mean(x, axis=0))


class Attn(eqx.Module):
    attn: eqx.nn.MultiheadAttention
    head: eqx.nn.Linear

    def __call__(self, x):
        return self.head(jnp.mean(self.attn(x, x, x), axis=0))


def mha(k):
    k1, k2 = jax.random.split(k)
    model = Attn(eqx.nn.MultiheadAttention(4, 16, key=k1), eqx.nn.Linear(16, 2, key=k2))
    return model, (jnp.zeros((6, 16)),), None


def bert(k):
    return Encoder(True, k), (jnp.arange(6), jnp.ones((6, 6), bool)), None


def vit(k):
    return Encoder(False, k), (jnp.zeros((6, 12)), jax.random.key(0)), None


class UNet(eqx.Module):
    """Down, linear self-attention over the positions, up, and a skip concatenation."""

    down: eqx.nn.Conv2d
    qkv: eqx.nn.Conv2d
    attn_out: eqx.nn.Conv2d
    up: eqx.nn.ConvTranspose2d
    final: eqx.nn.Conv2d

    def __init__(self, key):
        k = jax.random.split(key, 5)
        self.down = eqx.nn.Conv2d(1, 8, 3, stride=2, padding=1, key=k[0])
        self.qkv = eqx.nn.Conv2d(8, 24, 1, use_bias=False, key=k[1])
        self.attn_out = eqx.nn.Conv2d(8, 8, 1, key=k[2])
        self.up = eqx.nn.ConvTranspose2d(8, 4, 2, stride=2, key=k[3])
        self.final = eqx.nn.Conv2d(5, 1, 1, key=k[4])

    def __call__(self, x):
        h = jax.nn.silu(self.down(x))
        c, hh, ww = h.shape
        q, k, v = (t.reshape(2, 4, hh * ww) for t in jnp.split(self.qkv(h), 3))
        q, k = jax.nn.softmax(q, axis=-2), jax.nn.softmax(k, axis=-1)
        out = jnp.einsum("hde,hdn->hen", jnp.einsum("hdn,hen->hde", k, v), q)
        h = h + self.attn_out(out.reshape(c, hh, ww))
        return self.final(jnp.concatenate([jax.nn.silu(self.up(h)), x]))


def unet(k):
    return UNet(k), (jnp.zeros((1, 16, 16)),), None


class KeySoftmaxAttention(eqx.Module):
    """Linear attention with the keys softmaxed over positions (no softmax on the queries)."""

    qkv: eqx.nn.Linear
    out: eqx.nn.Linear

    def __call__(self, x):
        q, k, v = jnp.split(jax.vmap(self.qkv)(x), 3, axis=-1)
        return jax.vmap(self.out)(q @ (jax.nn.softmax(k, axis=0).T @ v))


def key_softmax(k):
    k0, k1 = jax.random.split(k)
    model = KeySoftmaxAttention(eqx.nn.Linear(4, 12, key=k0), eqx.nn.Linear(4, 2, key=k1))
    return model, (jnp.zeros((6, 4)),), None


class Mixer(eqx.Module):
    embed: eqx.nn.Linear
    ln1: eqx.nn.LayerNorm
    tok1: eqx.nn.Linear
    tok2: eqx.nn.Linear
    ln2: eqx.nn.LayerNorm
    ch1: eqx.nn.Linear
    ch2: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, key, tokens=8, c=12):
        k = jax.random.split(key, 6)
        self.embed = eqx.nn.Linear(4, c, key=k[0])
        self.tok1, self.tok2 = (
            eqx.nn.Linear(tokens, 16, key=k[1]),
            eqx.nn.Linear(16, tokens, key=k[2]),
        )
        self.ch1, self.ch2 = eqx.nn.Linear(c, 24, key=k[3]), eqx.nn.Linear(24, c, key=k[4])
        self.ln1, self.ln2 = eqx.nn.LayerNorm(c), eqx.nn.LayerNorm(c)
        self.head = eqx.nn.Linear(c, 2, key=k[5])

    def __call__(self, x):
        x = jax.vmap(self.embed)(x)
        token_mlp = lambda col: self.tok2(jax.nn.gelu(self.tok1(col)))
        x = x + jax.vmap(token_mlp, in_axes=1, out_axes=1)(jax.vmap(self.ln1)(x))
        x = x + jax.vmap(lambda t: self.ch2(jax.nn.gelu(self.ch1(t))))(jax.vmap(self.ln2)(x))
        return self.head(jnp.mean(x, axis=0))


def mixer(k):
    return Mixer(k), (jnp.zeros((8, 4)),), None


class Gated(eqx.Module):
    inp: eqx.nn.Linear
    up: eqx.nn.Linear
    gate: eqx.nn.Linear | None
    down: eqx.nn.Linear

    def __init__(self, fused: bool, key):
        k = jax.random.split(key, 4)
        self.inp = eqx.nn.Linear(8, 16, key=k[0])
        self.up = eqx.nn.Linear(16, 64 if fused else 32, key=k[1])
        self.gate = None if fused else eqx.nn.Linear(16, 32, key=k[2])
        self.down = eqx.nn.Linear(32, 2, key=k[3])

    def __call__(self, x):
        h = jax.nn.relu(self.inp(x))
        g, u = jnp.split(self.up(h), 2) if self.gate is None else (self.gate(h), self.up(h))
        return self.down(jax.nn.silu(g) * u)


class Twice(eqx.Module):
    inp: eqx.nn.Linear
    mid: eqx.nn.Linear
    out: eqx.nn.Linear

    def __call__(self, x):
        h = jax.nn.relu(self.mid(jax.nn.relu(self.inp(x))))
        return self.out(jnp.tanh(self.mid(h)))


def twice(k):
    k = jax.random.split(k, 3)
    layers = [eqx.nn.Linear(8, 16, key=k[0]), eqx.nn.Linear(16, 16, key=k[1])]
    return Twice(*layers, eqx.nn.Linear(16, 2, key=k[2])), (jnp.zeros(8),), None


class Recurrent(eqx.Module):
    cell: eqx.Module
    head: eqx.nn.MLP

    def __call__(self, xs):
        cell = self.cell
        if isinstance(cell, eqx.nn.LSTMCell):
            zero = (jnp.zeros(cell.hidden_size), jnp.zeros(cell.hidden_size))
            (h, _), _ = jax.lax.scan(lambda c, x: (cell(x, c), None), zero, xs)
        else:
            zero = jnp.zeros(cell.hidden_size)  # type: ignore[attr-defined]
            h, _ = jax.lax.scan(lambda c, x: (cell(x, c), None), zero, xs)  # type: ignore[operator]
        return self.head(h)


def gru(k):
    k1, k2 = jax.random.split(k)
    model = Recurrent(eqx.nn.GRUCell(4, 16, key=k1), eqx.nn.MLP(16, 2, 32, 1, key=k2))
    return model, (jnp.zeros((10, 4)),), None


def lstm(k):
    k1, k2 = jax.random.split(k)
    model = Recurrent(eqx.nn.LSTMCell(4, 16, key=k1), eqx.nn.MLP(16, 2, 32, 1, key=k2))
    return model, (jnp.zeros((10, 4)),), None


def scan_mlp(k):
    return eqx.nn.MLP(8, 2, 32, 4, scan=True, key=k), (jnp.zeros(8),), None


class Normed(eqx.Module):
    layer: eqx.Module
    out: eqx.nn.Linear
    state: eqx.nn.State | None

    def __call__(self, x):
        h = self.layer(x) if self.state is None else self.layer(x, self.state)[0]  # type: ignore[operator]
        return self.out(jax.nn.relu(h))


def spectral(k):
    k1, k2, k3 = jax.random.split(k, 3)
    sn, state = eqx.nn.make_with_state(eqx.nn.SpectralNorm)(
        eqx.nn.Linear(8, 16, key=k1), "weight", inference=True, key=k2
    )
    return Normed(sn, eqx.nn.Linear(16, 2, key=k3), state), (jnp.zeros(8),), None


def weightnorm(k):
    k1, k2 = jax.random.split(k)
    layer = eqx.nn.WeightNorm(eqx.nn.Linear(8, 16, key=k1))
    return Normed(layer, eqx.nn.Linear(16, 2, key=k2), None), (jnp.zeros(8),), None


class BNNet(eqx.Module):
    conv: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    fc: eqx.nn.Linear

    def __call__(self, x, state):
        h, state = self.bn(self.conv(x), state)
        return self.fc(jnp.mean(jax.nn.relu(h), axis=(1, 2))), state


def batchnorm(training: bool):
    def make(k):
        k1, k2 = jax.random.split(k)
        bn = eqx.nn.BatchNorm(8, "batch", inference=not training, mode="batch")
        model, state = eqx.nn.make_with_state(BNNet)(
            eqx.nn.Conv2d(1, 8, 3, key=k1), bn, eqx.nn.Linear(8, 2, key=k2)
        )
        return model, (jnp.zeros((1, 10, 10)), state), lambda m, x, s: m(x, s)[0]

    return make


class Drop(eqx.Module):
    l1: eqx.nn.Linear
    l2: eqx.nn.Linear

    def __call__(self, x, key):
        return self.l2(eqx.nn.Dropout(0.2)(jax.nn.relu(self.l1(x)), key=key))


def dropout(k):
    k1, k2 = jax.random.split(k)
    model = Drop(eqx.nn.Linear(8, 32, key=k1), eqx.nn.Linear(32, 2, key=k2))
    return model, (jnp.zeros(8), jax.random.key(1)), None


class Iterated(eqx.Module):
    a: eqx.nn.Linear
    r: eqx.nn.Linear
    out: eqx.nn.Linear

    def __call__(self, x):
        h = jax.nn.relu(self.a(x))
        step = lambda c: (c[0] + 1, jnp.tanh(self.r(c[1])))
        return self.out(jax.lax.while_loop(lambda c: c[0] < 3, step, (0, h))[1])


def while_loop(k):
    k = jax.random.split(k, 3)
    layers = [eqx.nn.Linear(8, 16, key=k[0]), eqx.nn.Linear(16, 16, key=k[1])]
    return Iterated(*layers, eqx.nn.Linear(16, 2, key=k[2])), (jnp.zeros(8),), None


def ensemble(k):
    members = eqx.filter_vmap(lambda key: eqx.nn.MLP(8, 1, 32, 2, key=key))(jax.random.split(k, 2))
    return members, (jnp.zeros(8),), lambda m, x: eqx.filter_vmap(lambda c: c(x))(m)


class Sorted(eqx.Module):
    l1: eqx.nn.Linear
    l2: eqx.nn.Linear

    def __call__(self, x):
        return self.l2(jnp.sort(jax.nn.relu(self.l1(x))))


def sort_units(k):
    k1, k2 = jax.random.split(k)
    return Sorted(eqx.nn.Linear(8, 16, key=k1), eqx.nn.Linear(16, 2, key=k2)), (jnp.zeros(8),), None


class Maxout(eqx.Module):
    l1: eqx.nn.Linear
    l2: eqx.nn.Linear

    def __call__(self, x):
        return self.l2(jnp.max(jax.nn.relu(self.l1(x)).reshape(8, 2), axis=1))


def maxout(k):
    k1, k2 = jax.random.split(k)
    return Maxout(eqx.nn.Linear(8, 16, key=k1), eqx.nn.Linear(8, 2, key=k2)), (jnp.zeros(8),), None


class Tied(eqx.Module):
    w: jax.Array
    mid: eqx.nn.Linear

    def __call__(self, x):
        return self.w.T @ jax.nn.relu(self.mid(jax.nn.relu(self.w @ x)))


def tied(k):
    k1, k2 = jax.random.split(k)
    return (
        Tied(jax.random.normal(k1, (16, 8)), eqx.nn.Linear(16, 16, key=k2)),
        (jnp.zeros(8),),
        None,
    )


# ---- modern blocks, as their users write them ----------------------------------------------


class ClassToken(eqx.Module):
    """A ViT's class token: a parameter row concatenated before the embedded patches."""

    emb: eqx.nn.Linear
    cls: jax.Array
    fc: eqx.nn.Linear
    out: eqx.nn.Linear

    def __call__(self, x):
        h = jnp.concatenate([self.cls, jax.vmap(self.emb)(x)])
        return self.out(jax.nn.relu(jax.vmap(self.fc)(h))[0])


def class_token(k):
    k = jax.random.split(k, 3)
    layers = eqx.nn.Linear(6, 8, key=k[0]), eqx.nn.Linear(8, 8, key=k[1])
    model = ClassToken(layers[0], jnp.zeros((1, 8)), layers[1], eqx.nn.Linear(8, 2, key=k[2]))
    return model, (jnp.zeros((4, 6)),), None


class Repeats(eqx.Module):
    """Hidden units concatenated with copies of two of them."""

    a: eqx.nn.Linear
    o: eqx.nn.Linear

    def __call__(self, x):
        h = jax.nn.relu(self.a(x))
        return self.o(jnp.concatenate([h, h[:2]]))


def repeats(k):
    k1, k2 = jax.random.split(k)
    return (
        Repeats(eqx.nn.Linear(8, 16, key=k1), eqx.nn.Linear(18, 2, key=k2)),
        (jnp.zeros(8),),
        None,
    )


class GQA(eqx.Module):
    """Grouped-query attention: 4 query heads share 2 key/value heads (Llama-style)."""

    q: eqx.nn.Linear
    kv: eqx.nn.Linear
    o: eqx.nn.Linear
    head: eqx.nn.Linear
    rope: bool = eqx.field(static=True)

    def __call__(self, x):
        n, hd = x.shape[0], 4
        q = jax.vmap(self.q)(x).reshape(n, 4, hd)
        k, v = jnp.split(jax.vmap(self.kv)(x).reshape(n, 2, 2 * hd), 2, axis=-1)
        if self.rope:  # rotary embedding: the head's halves rotated by a position's angle
            angle = jnp.arange(n)[:, None, None] * jnp.array([1.0, 0.1])
            cos, sin = jnp.cos(angle), jnp.sin(angle)

            def rotate(t):
                t1, t2 = jnp.split(t, 2, axis=-1)
                return jnp.concatenate([t1 * cos - t2 * sin, t1 * sin + t2 * cos], axis=-1)

            q, k = rotate(q), rotate(k)
        k, v = jnp.repeat(k, 2, axis=1), jnp.repeat(v, 2, axis=1)
        w = jax.nn.softmax(jnp.einsum("qhd,khd->hqk", q, k) / 2.0, axis=-1)
        h = jnp.einsum("hqk,khd->qhd", w, v).reshape(n, 4 * hd)
        return self.head(jax.vmap(self.o)(h).mean(0))


def gqa(rope: bool):
    def make(k):
        k = jax.random.split(k, 4)
        model = GQA(
            eqx.nn.Linear(8, 16, key=k[0]),
            eqx.nn.Linear(8, 16, key=k[1]),
            eqx.nn.Linear(16, 8, key=k[2]),
            eqx.nn.Linear(8, 2, key=k[3]),
            rope,
        )
        return model, (jnp.zeros((5, 8)),), None

    return make


class ScannedResidual(eqx.Module):
    """Residual MLP blocks stacked by filter_vmap and applied by lax.scan (Equinox's idiom)."""

    inp: eqx.nn.Linear
    blocks: eqx.nn.MLP
    out: eqx.nn.Linear

    def __call__(self, x):
        params, static = eqx.partition(self.blocks, eqx.is_array)

        def step(h, p):
            return h + eqx.combine(p, static)(h), None

        h, _ = jax.lax.scan(step, self.inp(x), params)
        return self.out(h)


def scanned_residual(k):
    k = jax.random.split(k, 3)
    blocks = eqx.filter_vmap(lambda key: eqx.nn.MLP(8, 8, 16, 1, key=key))(
        jax.random.split(k[1], 3)
    )
    model = ScannedResidual(eqx.nn.Linear(4, 8, key=k[0]), blocks, eqx.nn.Linear(8, 2, key=k[2]))
    return model, (jnp.zeros(4),), None


class NeuralODE(eqx.Module):
    """diffrax.diffeqsolve of an MLP vector field (Tsit5, the default adjoint)."""

    field: eqx.nn.MLP
    out: eqx.nn.Linear

    def __call__(self, y0):
        import diffrax

        term = diffrax.ODETerm(lambda t, y, args: self.field(y))
        sol = diffrax.diffeqsolve(term, diffrax.Tsit5(), 0.0, 1.0, 0.25, y0, max_steps=8)
        assert sol.ys is not None  # saved at t1 by default
        return self.out(sol.ys[-1])


def neural_ode(k):
    k1, k2 = jax.random.split(k)
    field = eqx.nn.MLP(4, 4, 16, 1, activation=jnp.tanh, key=k1)
    return NeuralODE(field, eqx.nn.Linear(4, 2, key=k2)), (jnp.zeros(4),), None


class FiLM(eqx.Module):
    """A denoiser layer conditioned by FiLM: h * (1 + γ(t)) + β(t)."""

    a: eqx.nn.Linear
    cond: eqx.nn.Linear
    o: eqx.nn.Linear

    def __call__(self, x, t):
        gamma, beta = jnp.split(self.cond(t), 2)
        return self.o(jax.nn.relu(self.a(x) * (1 + gamma) + beta))


def film(k):
    k = jax.random.split(k, 3)
    layers = eqx.nn.Linear(8, 16, key=k[0]), eqx.nn.Linear(4, 32, key=k[1])
    return FiLM(*layers, eqx.nn.Linear(16, 2, key=k[2])), (jnp.zeros(8), jnp.zeros(4)), None


class C51(eqx.Module):
    """A distributional head: a softmax over 11 atoms per action, times the support."""

    a: eqx.nn.Linear
    logits: eqx.nn.Linear

    def __call__(self, x):
        p = jax.nn.softmax(self.logits(jax.nn.relu(self.a(x))).reshape(2, 11), axis=-1)
        return p @ jnp.linspace(-10.0, 10.0, 11)


def c51(k):
    k1, k2 = jax.random.split(k)
    return C51(eqx.nn.Linear(8, 16, key=k1), eqx.nn.Linear(16, 22, key=k2)), (jnp.zeros(8),), None


class Noisy(eqx.Module):
    """NoisyNet layers: w = μ + σ ⊙ ε with factorised Gaussian ε drawn from a key."""

    mu: jax.Array
    sigma: jax.Array
    out: eqx.nn.Linear

    def __call__(self, x, key):
        e_in, e_out = jax.random.normal(key, (2, 16))
        f = lambda e: jnp.sign(e) * jnp.sqrt(jnp.abs(e))
        w = self.mu + self.sigma * jnp.outer(f(e_out), f(e_in[:8]))
        return self.out(jax.nn.relu(w @ x))


def noisy(k):
    k1, k2 = jax.random.split(k)
    mu = jax.random.normal(k1, (16, 8)) * 0.3
    model = Noisy(mu, jnp.full((16, 8), 0.05), eqx.nn.Linear(16, 2, key=k2))
    return model, (jnp.zeros(8), jax.random.key(0)), None


class TopK(eqx.Module):
    """A mixture of 4 expert MLPs with top-2 routing."""

    router: eqx.nn.Linear
    experts: eqx.nn.MLP
    out: eqx.nn.Linear

    def __call__(self, x):
        weights, chosen = jax.lax.top_k(self.router(x), 2)
        ys = eqx.filter_vmap(lambda e: e(x))(self.experts)
        return self.out(jnp.einsum("k,kd->d", jax.nn.softmax(weights), ys[chosen]))


def top_k(k):
    k = jax.random.split(k, 3)
    experts = eqx.filter_vmap(lambda key: eqx.nn.MLP(8, 8, 16, 1, key=key))(
        jax.random.split(k[1], 4)
    )
    return (
        TopK(eqx.nn.Linear(8, 4, key=k[0]), experts, eqx.nn.Linear(8, 2, key=k[2])),
        (jnp.zeros(8),),
        None,
    )


class LongConv(eqx.Module):
    """A long convolution over positions by FFT (Hyena/S4-style), per channel."""

    a: eqx.nn.Linear
    kernel: jax.Array
    o: eqx.nn.Linear

    def __call__(self, x):
        h = jax.vmap(self.a)(x)  # (positions, channels)
        n = h.shape[0]
        f = jnp.fft.rfft(h, 2 * n, axis=0) * jnp.fft.rfft(self.kernel, 2 * n, axis=0)
        return self.o(jax.nn.gelu(jnp.fft.irfft(f, 2 * n, axis=0)[:n]).mean(0))


def long_conv(k):
    k = jax.random.split(k, 3)
    model = LongConv(
        eqx.nn.Linear(4, 8, key=k[0]),
        jax.random.normal(k[1], (6, 8)),
        eqx.nn.Linear(8, 2, key=k[2]),
    )
    return model, (jnp.zeros((6, 4)),), None


#: family: constructor
FAMILIES = {
    "MLP (eqx.nn.MLP)": mlp,
    "MNIST-style CNN: max-pool, avg-pool, flatten": cnn,
    "ResNet (torchvision layout, BatchNorm state as input)": resnet,
    "eqx.nn.MultiheadAttention": mha,
    "BERT-style encoder layer (Embedding, post-LN, mask)": bert,
    "ViT-style block with stochastic depth (key input)": vit,
    "U-Net with linear self-attention": unet,
    "linear attention, keys softmaxed over positions": key_softmax,
    "MLP-Mixer block (token mixing)": mixer,
    "SwiGLU, fused up-projection": lambda k: (Gated(True, k), (jnp.zeros(8),), None),
    "SwiGLU, separate gate and up": lambda k: (Gated(False, k), (jnp.zeros(8),), None),
    "the same Linear called twice": twice,
    "GRU (lax.scan) + MLP head": gru,
    "LSTM (lax.scan) + MLP head": lstm,
    "eqx.nn.MLP(scan=True)": scan_mlp,
    "eqx.nn.SpectralNorm": spectral,
    "eqx.nn.WeightNorm": weightnorm,
    "BatchNorm, inference mode": batchnorm(False),
    "BatchNorm, training mode": batchnorm(True),
    "Dropout in training mode (key input)": dropout,
    "lax.while_loop": while_loop,
    "vmapped ensemble (2 members)": ensemble,
    "sort over units": sort_units,
    "maxout (max over pairs of units)": maxout,
    "weight tied as W and Wᵀ": tied,
    "ViT class token (concatenate along tokens)": class_token,
    "units concatenated with copies of some (after the ReLU)": repeats,
    "grouped-query attention (4 query heads, 2 key/value heads)": gqa(False),
    "grouped-query attention with RoPE": gqa(True),
    "residual blocks stacked and applied by lax.scan": scanned_residual,
    "neural ODE (diffrax.diffeqsolve, Tsit5)": neural_ode,
    "FiLM conditioning h·(1 + γ(t)) + β(t)": film,
    "C51 distributional head (softmax over atoms × support)": c51,
    "NoisyNet layer (w = μ + σ ⊙ ε, key input)": noisy,
    "mixture of experts, top-2 routing": top_k,
    "long convolution by FFT over positions": long_conv,
}

__all__ = ["FAMILIES", "np"]
