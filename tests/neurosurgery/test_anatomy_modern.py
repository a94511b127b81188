"""Blocks of recent models: FiLM conditioning, a distributional (C51) head, NoisyNet layers,
grouped-query attention (with and without RoPE), a class token concatenated before the tokens,
and residual blocks stacked and applied by a scan — mapped, with the owners checked by hand and
zero-outgoing resets checked to keep the function and cut the re-drawn entries' gradients."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neurosurgery as ns

from .archs import draw


def owner_of(group: ns.NeuronGroup, role: str, path: str) -> np.ndarray:
    (s,) = [s for s in getattr(group, role) if s.path == path and s.kind == "weight"]
    return s.element_owner().reshape(s.shape)


def check_resets(anatomy: ns.Anatomy, model, other, xs: tuple, call) -> list[str]:
    """For every group a reset should keep the function of (paired ones too: they are left out
    by default, not for lack of a function-preserving reset): reset ~half its units re-drawing
    from `other`, against the same reset re-drawing from `model` itself; the outputs must not
    move and the re-drawn entries must get no gradient. Returns the names checked."""
    checked = [g.name for g in anatomy if not (g.output or g.shared) and g.preserving]
    outputs = lambda m: jax.vmap(lambda *x: call(m, *x))(*xs)
    cot = jax.random.normal(jax.random.key(5), eqx.filter_eval_shape(outputs, model).shape)

    @eqx.filter_jit  # one compile for every group: the masks are arrays
    def run(masks):
        reset = lambda o: (
            ns.reset(
                anatomy, model, masks, jax.random.key(1), init=lambda k: o, include_shared=True
            ).model
        )
        new, same = reset(other), reset(model)
        moved = jnp.max(jnp.abs(outputs(new) - outputs(same)))
        grads = eqx.filter_grad(lambda m: jnp.sum(outputs(m) * cot))(new)
        return moved, jnp.max(jnp.abs(outputs(model))), grads

    rng = np.random.default_rng(0)
    for name in checked:
        mask = rng.random(anatomy[name].unit_shape) < 0.5
        mask.flat[0] = True
        masks = {n: np.zeros(anatomy[n].unit_shape, bool) for n in checked}
        masks[name] = mask
        moved, scale, grads = run(masks)
        assert float(moved) <= 1e-6 * float(scale), name
        cut = anatomy.element_masks({name: jnp.asarray(mask)}, ("incoming", "per_unit"))
        leaves = jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_array))
        for path, g, m in zip(anatomy.leaf_paths, leaves, cut, strict=True):
            if m is not None:
                assert float(np.max(np.abs(np.where(m, np.asarray(g), 0.0)))) == 0.0, (name, path)
    return checked


class FiLM(eqx.Module):
    """A denoiser layer conditioned on t by FiLM, h * (1 + gamma(t)) + beta(t), with gamma
    and beta from one layer (`split`) or from two, behind a residual block that stays shared."""

    a: eqx.nn.Linear
    cond: eqx.nn.Linear
    shift: eqx.nn.Linear | None
    res: eqx.nn.Linear
    o: eqx.nn.Linear

    def __init__(self, key, split: bool):
        k = jax.random.split(key, 5)
        self.a = eqx.nn.Linear(3, 6, key=k[0])
        self.cond = eqx.nn.Linear(2, 12 if split else 6, key=k[1])
        self.shift = None if split else eqx.nn.Linear(2, 6, key=k[2])
        self.res = eqx.nn.Linear(6, 6, key=k[3])
        self.o = eqx.nn.Linear(6, 2, key=k[4])

    def __call__(self, x, t):
        if self.shift is None:
            gamma, beta = jnp.split(self.cond(t), 2)
        else:
            gamma, beta = self.cond(t), self.shift(t)
        h = jax.nn.relu(self.a(x) * (1 + gamma) + beta)
        return self.o(h + jnp.tanh(self.res(h)))


@pytest.mark.parametrize("split", [True, False])
def test_film_scale_and_shift_units_are_the_units_they_condition(split):
    make = lambda k: FiLM(k, split)
    model, other = draw(make, 0), draw(make, 1)
    anatomy = ns.anatomy(model, jnp.zeros(3), jnp.zeros(2))
    film = anatomy[0]
    assert set(film.name.split("+")) == ({"a", "cond"} if split else {"a", "cond", "shift"})
    assert film.unit_shape == (6,)
    rows = np.broadcast_to(np.arange(6)[:, None], (6, 2))
    cond = owner_of(film, "incoming", ".cond.weight")
    np.testing.assert_array_equal(cond, np.concatenate([rows, rows]) if split else rows)
    if not split:
        np.testing.assert_array_equal(owner_of(film, "incoming", ".shift.weight"), rows)
    # h is read by the residual block and by the sum after it: a stream, shared with res
    assert film.shared_with == ("res",) and anatomy["res"].shared
    xs = (
        jax.random.normal(jax.random.key(2), (8, 3)),
        jax.random.normal(jax.random.key(3), (8, 2)),
    )
    call = lambda m, x, t: m(x, t)
    assert check_resets(anatomy, model, other, xs, call) == []  # every group is shared or output


class FiLMHead(eqx.Module):
    a: eqx.nn.Linear
    cond: eqx.nn.Linear
    o: eqx.nn.Linear

    def __call__(self, x, t):
        gamma, beta = jnp.split(self.cond(t), 2)
        return self.o(jax.nn.relu(self.a(x) * (1 + gamma) + beta))


def test_film_resets_keep_the_function():
    make = lambda k: FiLMHead(
        eqx.nn.Linear(3, 6, key=k), eqx.nn.Linear(2, 12, key=k), eqx.nn.Linear(6, 2, key=k)
    )
    model, other = draw(make, 0), draw(make, 1)
    anatomy = ns.anatomy(model, jnp.zeros(3), jnp.zeros(2))
    xs = (
        jax.random.normal(jax.random.key(2), (8, 3)),
        jax.random.normal(jax.random.key(3), (8, 2)),
    )
    assert check_resets(anatomy, model, other, xs, lambda m, x, t: m(x, t)) == [anatomy[0].name]


class C51(eqx.Module):
    a: eqx.nn.Linear
    logits: eqx.nn.Linear

    def __call__(self, x):
        p = jax.nn.softmax(self.logits(jax.nn.relu(self.a(x))).reshape(2, 5), axis=-1)
        return p @ jnp.linspace(-1.0, 1.0, 5)


def test_a_c51_heads_atoms_are_outputs():
    make = lambda k: C51(eqx.nn.Linear(3, 6, key=k), eqx.nn.Linear(6, 10, key=k))
    model, other = draw(make, 0), draw(make, 1)
    anatomy = ns.anatomy(model, jnp.zeros(3))
    assert [g.name for g in anatomy] == ["a", "logits"]
    assert anatomy["logits"].output and not anatomy["logits"].hidden
    np.testing.assert_array_equal(
        owner_of(anatomy["a"], "outgoing", ".logits.weight"),
        np.broadcast_to(np.arange(6)[None, :], (10, 6)),
    )
    xs = (jax.random.normal(jax.random.key(2), (8, 3)),)
    assert check_resets(anatomy, model, other, xs, lambda m, x: m(x)) == ["a"]


def test_a_hidden_layer_read_through_a_constant_is_not_reset_by_default():
    class Readout(eqx.Module):
        a: eqx.nn.Linear
        o: eqx.nn.Linear

        def __call__(self, x):
            h = jax.nn.relu(self.a(x)).reshape(2, 3) @ jnp.arange(3.0)  # not a parameter
            return self.o(h)

    model = draw(lambda k: Readout(eqx.nn.Linear(3, 6, key=k), eqx.nn.Linear(2, 2, key=k)), 0)
    group = ns.anatomy(model, jnp.zeros(3))["a"]
    assert not group.resettable and "a constant weight" in group.no_reset


class Noisy(eqx.Module):
    """A NoisyNet layer: w = mu + sigma * eps, eps factorised Gaussian noise from a key."""

    mu: jax.Array
    sigma: jax.Array
    out: eqx.nn.Linear

    def __call__(self, x, key):
        e_out, e_in = jax.random.normal(key, (2, 6))
        f = lambda e: jnp.sign(e) * jnp.sqrt(jnp.abs(e))
        w = self.mu + self.sigma * jnp.outer(f(e_out), f(e_in[:3]))
        return self.out(jax.nn.relu(w @ x))


def test_noisy_net_sigma_rows_belong_to_the_unit_they_perturb():
    make = lambda k: Noisy(
        jax.random.normal(k, (6, 3)), jnp.full((6, 3), 0.1), eqx.nn.Linear(6, 2, key=k)
    )
    model, other = draw(make, 0), draw(make, 1)
    anatomy = ns.anatomy(model, jnp.zeros(3), jax.random.key(0))
    group = anatomy["mu"]
    rows = np.broadcast_to(np.arange(6)[:, None], (6, 3))
    np.testing.assert_array_equal(owner_of(group, "incoming", ".mu"), rows)
    np.testing.assert_array_equal(owner_of(group, "incoming", ".sigma"), rows)
    xs = (jax.random.normal(jax.random.key(2), (8, 3)), jax.random.split(jax.random.key(3), 8))
    assert check_resets(anatomy, model, other, xs, lambda m, x, k: m(x, k)) == ["mu"]


class ScannedResidual(eqx.Module):
    """Residual MLP blocks stacked by filter_vmap and applied by lax.scan."""

    inp: eqx.nn.Linear
    blocks: eqx.nn.MLP
    out: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 3)
        self.inp, self.out = eqx.nn.Linear(3, 4, key=k[0]), eqx.nn.Linear(4, 2, key=k[1])
        make = lambda key: eqx.nn.MLP(4, 4, 5, 1, key=key)
        self.blocks = eqx.filter_vmap(make)(jax.random.split(k[2], 3))

    def __call__(self, x):
        params, static = eqx.partition(self.blocks, eqx.is_array)

        def step(h, p):
            return h + eqx.combine(p, static)(h), None

        return self.out(jax.lax.scan(step, self.inp(x), params)[0])


def test_a_scanned_residual_stack_is_one_stream_group_per_layer():
    model, other = draw(ScannedResidual, 0), draw(ScannedResidual, 1)
    anatomy = ns.anatomy(model, jnp.zeros(3))
    names = [g.name for g in anatomy]
    assert names == [
        "inp",
        "blocks.layers[0]",
        "blocks.layers[1][0]",
        "blocks.layers[1][1]",
        "blocks.layers[1][2]",
        "out",
    ]
    hidden = anatomy["blocks.layers[0]"]  # the blocks' hidden layers: one stacked group
    assert hidden.unit_shape == (3, 5) and hidden.resettable
    for j in range(3):
        part = anatomy[f"blocks.layers[1][{j}]"]
        assert part.unit_shape == (4,) and part.shared and "scan" in anatomy.unobserved[part.name]
        own = owner_of(part, "incoming", ".blocks.layers[1].weight")
        expect = np.full((3, 4, 5), -1)
        expect[j] = np.arange(4)[:, None]
        np.testing.assert_array_equal(own, expect)
        # the stream unit is read by every later block and by the output layer
        read = {s.path for s in part.outgoing}
        assert read == ({".blocks.layers[0].weight"} if j < 2 else set()) | {".out.weight"}
        if j < 2:
            later = owner_of(part, "outgoing", ".blocks.layers[0].weight")
            expect = np.full((3, 5, 4), -1)
            expect[j + 1 :] = np.arange(4)[None, None, :]
            np.testing.assert_array_equal(later, expect)
    xs = (jax.random.normal(jax.random.key(2), (8, 3)),)
    assert check_resets(anatomy, model, other, xs, lambda m, x: m(x)) == ["blocks.layers[0]"]
    obs = ns.observe(anatomy, model, lambda y: jnp.sum(y**2), xs[0])[1]
    assert ns.GraMa().score(anatomy, obs, ns.EmptyState())[0]["blocks.layers[0]"].shape == (3, 5)


class GQA(eqx.Module):
    """4 query heads share 2 key/value heads (head size 2), optionally with rotary embedding."""

    q: eqx.nn.Linear
    kv: eqx.nn.Linear
    o: eqx.nn.Linear
    rope: bool = eqx.field(static=True)

    def __call__(self, x):
        n = x.shape[0]
        q = jax.vmap(self.q)(x).reshape(n, 4, 2)
        k, v = jnp.split(jax.vmap(self.kv)(x).reshape(n, 2, 4), 2, axis=-1)
        if self.rope:
            angle = jnp.arange(n, dtype=jnp.float32)[:, None, None] * 0.3
            rotate = lambda t: jnp.concatenate(
                [
                    t[..., :1] * jnp.cos(angle) - t[..., 1:] * jnp.sin(angle),
                    t[..., :1] * jnp.sin(angle) + t[..., 1:] * jnp.cos(angle),
                ],
                axis=-1,
            )
            q, k = rotate(q), rotate(k)
        k, v = jnp.repeat(k, 2, axis=1), jnp.repeat(v, 2, axis=1)
        w = jax.nn.softmax(jnp.einsum("qhd,khd->hqk", q, k), axis=-1)
        return jax.vmap(self.o)(jnp.einsum("hqk,khd->qhd", w, v).reshape(n, 8)).mean(0)


@pytest.mark.parametrize("rope", [False, True])
def test_grouped_query_attention_pairs_a_key_unit_with_its_query_units(rope):
    make = lambda k: GQA(
        eqx.nn.Linear(3, 8, key=k), eqx.nn.Linear(3, 8, key=k), eqx.nn.Linear(8, 2, key=k), rope
    )
    model, other = draw(make, 0), draw(make, 1)
    anatomy = ns.anatomy(model, jnp.zeros((4, 3)))
    q, key = anatomy["q"], anatomy["kv:key"]
    # query row 2h + d pairs with key unit (h // 2, d): kv row 4 (h // 2) + d
    q_head, d = np.arange(8) // 2, np.arange(8) % 2
    key_row = 4 * (q_head // 2) + d
    own = owner_of(key, "outgoing", ".q.weight")[:, 0]
    incoming = owner_of(key, "incoming", ".kv.weight")[:, 0]
    # the key unit that owns query row r is the one whose incoming row is `key_row[r]`
    np.testing.assert_array_equal(own, incoming[key_row])
    if rope:  # the rotation mixes a head's two dimensions: one unit per head
        assert key.unit_shape == (2,) and q.unit_shape == (4,)
    else:
        assert key.unit_shape == (4,) and q.unit_shape == (8,)
    # several query units share one key unit: none owns its rows, and the group says so
    assert not q.outgoing and not q.preserving and "grouped-query" in q.term_kept
    assert q.no_reset == q.term_kept
    xs = (jax.random.normal(jax.random.key(2), (8, 4, 3)),)
    checked = check_resets(anatomy, model, other, xs, lambda m, x: m(x))
    assert "kv:key" in checked and "q" not in checked


class ClassToken(eqx.Module):
    """A ViT's class token before the embedded patches, an attention over all tokens, and a
    head on the class position."""

    emb: eqx.nn.Linear
    cls: jax.Array
    attn: eqx.nn.MultiheadAttention
    fc: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 4)
        self.emb, self.cls = eqx.nn.Linear(3, 4, key=k[0]), jnp.ones((1, 4))
        self.attn = eqx.nn.MultiheadAttention(2, 4, key=k[1])
        self.fc, self.head = eqx.nn.Linear(4, 6, key=k[2]), eqx.nn.Linear(6, 2, key=k[3])

    def __call__(self, x):
        h = jnp.concatenate([self.cls, jax.vmap(self.emb)(x)])
        h = self.attn(h, h, h)
        return self.head(jax.nn.relu(self.fc(h[0])))


def test_a_class_token_concatenated_along_the_tokens_keeps_each_parts_units():
    model, other = draw(ClassToken, 0), draw(ClassToken, 1)
    anatomy = ns.anatomy(model, jnp.zeros((3, 3)))
    emb = anatomy["emb"]
    # the embedded patches (positions 1-3) are read by the attention's three projections
    assert {s.path for s in emb.outgoing} == {
        f".attn.{p}_proj.weight" for p in ("query", "key", "value")
    }
    np.testing.assert_array_equal(
        owner_of(emb, "outgoing", ".attn.value_proj.weight"),
        np.broadcast_to(np.arange(4)[None, :], (4, 4)),
    )
    # the class token is a parameter read at one position: in no group
    assert anatomy.ungrouped == {".cls": (4, 4)}
    # ... through the columns that read the embedded units: zeroing them removes its term too
    assert "class token" in emb.shares_columns and not emb.preserving and not emb.resettable
    xs = (jax.random.normal(jax.random.key(2), (8, 3, 3)),)
    silent = eqx.tree_at(lambda m: m.emb.weight, model, model.emb.weight.at[0].set(0.0))
    silent = eqx.tree_at(lambda m: m.emb.bias, silent, silent.emb.bias.at[0].set(0.0))
    mask = {"emb": jnp.arange(4) == 0}
    reset = ns.reset(
        anatomy, silent, mask, jax.random.key(0), init=lambda k: silent, include_shared=True
    ).model
    moved = jnp.max(jnp.abs(jax.vmap(reset)(xs[0]) - jax.vmap(silent)(xs[0])))
    assert float(moved) > 1e-3  # a dormant unit's reset moves the outputs: the mark is needed
    checked = check_resets(anatomy, model, other, xs, lambda m, x: m(x))
    assert {"attn.value_proj", "fc"} <= set(checked) and "emb" not in checked


def test_top_k_routing_is_refused_at_the_users_line_with_the_way_out():
    class TopK(eqx.Module):
        router: eqx.nn.Linear
        experts: eqx.nn.MLP

        def __call__(self, x):
            weights, chosen = jax.lax.top_k(self.router(x), 2)
            ys = eqx.filter_vmap(lambda e: e(x))(self.experts)
            return jnp.einsum("k,kd->d", jax.nn.softmax(weights), ys[chosen])

    experts = eqx.filter_vmap(lambda k: eqx.nn.MLP(3, 3, 4, 1, key=k))(
        jax.random.split(jax.random.key(0), 3)
    )
    model = TopK(eqx.nn.Linear(3, 3, key=jax.random.key(1)), experts)
    with pytest.raises(
        ns.AnatomyError,
        match=r"`top_k` at \S*test_anatomy_modern\.py:\d+ \(.*TopK.__call__\).*"
        r"units produced by `\.router\.weight`.*mixture-of-experts example",
    ):
        ns.anatomy(model, jnp.zeros(3))


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


def test_a_long_convolution_by_fft_keeps_its_channels_units():
    make = lambda k: LongConv(
        eqx.nn.Linear(3, 4, key=k), jnp.ones((5, 4)), eqx.nn.Linear(4, 2, key=k)
    )
    model, other = draw(make, 0), draw(make, 1)
    anatomy = ns.anatomy(model, jnp.zeros((5, 3)))
    np.testing.assert_array_equal(
        owner_of(anatomy["a"], "outgoing", ".o.weight"), np.broadcast_to(np.arange(4), (2, 4))
    )
    assert anatomy.ungrouped == {".kernel": (20, 20)}  # a filter per channel, in no group
    # the transform's zero padding reads nothing through the units' columns: no mark
    assert not anatomy["a"].shares_columns and anatomy["a"].resettable
    xs = (jax.random.normal(jax.random.key(2), (8, 5, 3)),)
    assert check_resets(anatomy, model, other, xs, lambda m, x: m(x)) == ["a"]

    class MixChannels(LongConv):  # a transform over the units themselves is refused
        def __call__(self, x):
            return self.o(
                jnp.fft.irfft(jnp.fft.rfft(jax.vmap(self.a)(x), axis=-1), axis=-1).mean(0)
            )

    with pytest.raises(ns.AnatomyError, match=r"`fft` at \S*test_anatomy_modern\.py"):
        mixed = MixChannels(
            *(make(jax.random.key(0)).a, jnp.ones((5, 4)), make(jax.random.key(0)).o)
        )
        ns.anatomy(mixed, jnp.zeros((5, 3)))


class Padded(eqx.Module):
    """Embedded tokens padded with a zero token before a per-token layer."""

    emb: eqx.nn.Linear
    fc: eqx.nn.Linear

    def __call__(self, x):
        h = jnp.pad(jax.nn.relu(jax.vmap(self.emb)(x)), ((1, 0), (0, 0)))
        return jax.vmap(self.fc)(h).mean(0)


def test_zero_padding_along_the_tokens_leaves_the_units_resettable():
    make = lambda k: Padded(eqx.nn.Linear(3, 4, key=k), eqx.nn.Linear(4, 2, key=k))
    model, other = draw(make, 0), draw(make, 1)
    anatomy = ns.anatomy(model, jnp.zeros((3, 3)))
    emb = anatomy["emb"]
    assert not emb.shares_columns and emb.resettable  # the padded token reads nothing
    xs = (jax.random.normal(jax.random.key(2), (8, 3, 3)),)
    assert check_resets(anatomy, model, other, xs, lambda m, x: m(x)) == ["emb"]


class NeuralODE(eqx.Module):
    """diffrax.diffeqsolve of an MLP vector field (Tsit5, the default adjoint)."""

    field: eqx.nn.MLP
    out: eqx.nn.Linear

    def __call__(self, y0):
        import diffrax

        term = diffrax.ODETerm(lambda t, y, args: self.field(y))
        sol = diffrax.diffeqsolve(term, diffrax.Tsit5(), 0.0, 1.0, 0.25, y0, max_steps=4)
        assert sol.ys is not None
        return self.out(sol.ys[-1])


def test_a_neural_ode_is_followed_through_the_solvers_loop():
    make = lambda k: NeuralODE(
        eqx.nn.MLP(3, 3, 5, 1, activation=jnp.tanh, key=k), eqx.nn.Linear(3, 2, key=k)
    )
    model, other = draw(make, 0), draw(make, 1)
    anatomy = ns.anatomy(model, jnp.zeros(3))
    hidden, state = anatomy["field.layers[0]"], anatomy["field.layers[1]"]
    assert hidden.resettable and hidden.preserving
    np.testing.assert_array_equal(
        owner_of(hidden, "outgoing", ".field.layers[1].weight"),
        np.broadcast_to(np.arange(5), (3, 5)),
    )
    # the field's outputs are the state's derivative: read through the solver's constants and
    # beside the initial state, so not reset by default, with the reason
    assert not state.resettable and state.no_reset
    assert set(anatomy.unobserved) == {"field.layers[0]", "field.layers[1]"}  # a while loop
    xs = (jax.random.normal(jax.random.key(2), (4, 3)),)
    assert check_resets(anatomy, model, other, xs, lambda m, x: m(x)) == ["field.layers[0]"]
