"""Plasticity injection: the output kept at injection (against numpy on an MLP, and on a
LayerNorm residual block), gradients only to the new head afterwards, the optimizer state, and
the refusals."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neurosurgery as ns

AT = 3


def mlp(key):
    return eqx.nn.MLP(3, 2, 5, 2, activation=jnp.tanh, key=key)


class Residual(eqx.Module):
    """Input layer, one block x + down(relu(LayerNorm(up(x)))), output layer."""

    inp: eqx.nn.Linear
    up: eqx.nn.Linear
    norm: eqx.nn.LayerNorm
    down: eqx.nn.Linear
    out: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 4)
        self.inp = eqx.nn.Linear(3, 4, key=k[0])
        self.up = eqx.nn.Linear(4, 6, key=k[1])
        self.norm = eqx.nn.LayerNorm(6)
        self.down = eqx.nn.Linear(6, 4, key=k[2])
        self.out = eqx.nn.Linear(4, 2, key=k[3])

    def __call__(self, x):
        x = self.inp(x)
        x = x + self.down(jax.nn.relu(self.norm(self.up(x))))
        return self.out(x)


def loss(model, x):
    return jnp.sum(jax.vmap(model)(x) ** 2)


class Case:
    def __init__(self, build, **head):
        self.strategy = ns.PlasticityInjection(at=AT, **head)
        self.make = lambda key: self.strategy.wrap(build(key), jnp.zeros(3))
        self.model = self.make(jax.random.key(0))
        self.anatomy = ns.anatomy(self.model, jnp.zeros(3))
        self.optimizer = optax.adam(1e-2)

        @eqx.filter_jit
        def run(model, opt_state, key, step):
            return self.strategy.step(
                self.anatomy,
                ns.Operand(
                    model, key, step, init=self.make, optimizer=self.optimizer, opt_state=opt_state
                ),
                None,
                ns.EmptyState(),
            )

        self.run = run


@pytest.fixture(scope="module")
def mlp_case():
    return Case(mlp, layers=2)


@pytest.fixture(scope="module")
def residual_case():
    return Case(Residual, groups=("up", "down", "out"))


def _np_mlp(layers, x):
    (w0, b0), (w1, b1), (w2, b2) = [(np.asarray(w, np.float64), np.asarray(b)) for w, b in layers]
    h = np.tanh(x @ w0.T + b0)
    h = np.tanh(h @ w1.T + b1)
    return h @ w2.T + b2


def _grads(model, x):
    return eqx.filter_grad(loss)(model, x)


def _trained(case, model, x):
    params = eqx.filter(model, eqx.is_array)
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = case.optimizer.update(
            _grads(model, x), case.optimizer.init(params), params
        )
    return eqx.apply_updates(model, updates), opt_state


def test_mlp_injection_keeps_the_output_and_trains_only_the_new_head(mlp_case):
    case = mlp_case
    x = jax.random.normal(jax.random.key(1), (64, 3))
    assert case.model.head_paths == (
        ".layers[1].weight",
        ".layers[1].bias",
        ".layers[2].weight",
        ".layers[2].bias",
    )
    # before injection: exactly the module, and no gradient reaches the new or frozen head
    np.testing.assert_array_equal(jax.vmap(case.model)(x), jax.vmap(case.model.module)(x))
    g = _grads(case.model, x)
    assert not any(np.any(np.asarray(a)) for a in (*g.fresh, *g.frozen))
    assert np.any(np.asarray(g.module.layers[2].weight))
    model, opt_state = _trained(case, case.model, x)  # nonzero Adam moments

    early = case.run(model, opt_state, jax.random.key(5), AT - 1)
    assert float(early.info["injected"]) == 0.0
    assert eqx.tree_equal(early.model, model)
    key = jax.random.key(6)
    result = case.run(model, opt_state, key, AT)
    new = result.model
    assert float(result.info["injected"]) == 1.0
    # the fresh head is the constructor's draw for this key, written into both copies
    drawn = case.make(key).module
    np.testing.assert_array_equal(new.fresh[0], drawn.layers[1].weight)
    np.testing.assert_array_equal(new.frozen[2], drawn.layers[2].weight)
    # the output: h_old + h_new − h_frozen, by hand, equals the old output
    probe = np.asarray(jax.random.normal(jax.random.key(2), (128, 3)), np.float64)
    old = [(layer.weight, layer.bias) for layer in model.module.layers]
    fresh = [old[0], (new.fresh[0], new.fresh[1]), (new.fresh[2], new.fresh[3])]
    frozen = [old[0], (new.frozen[0], new.frozen[1]), (new.frozen[2], new.frozen[3])]
    by_hand = _np_mlp(old, probe) + _np_mlp(fresh, probe) - _np_mlp(frozen, probe)
    before = np.asarray(jax.vmap(model)(jnp.asarray(probe, jnp.float32)))
    after = np.asarray(jax.vmap(new)(jnp.asarray(probe, jnp.float32)))
    np.testing.assert_allclose(by_hand, _np_mlp(old, probe), atol=1e-12)
    np.testing.assert_allclose(after, by_hand, atol=1e-5)
    assert np.max(np.abs(after - before)) <= 1e-6
    # afterwards, gradients reach the new head and the trunk, not the old or frozen head
    g = _grads(new, x)
    for a in (g.module.layers[1].weight, g.module.layers[2].bias, *g.frozen):
        assert not np.any(np.asarray(a))
    assert all(np.any(np.asarray(a)) for a in g.fresh)
    assert np.any(np.asarray(g.module.layers[0].weight))
    # the heads' optimizer entries are zeroed, the trunk's kept; an Adam step then leaves the
    # old and the frozen head exactly where they are
    mu = result.opt_state[0].mu
    assert not np.any(np.asarray(mu.module.layers[1].weight))
    assert not any(np.any(np.asarray(m)) for m in (*mu.fresh, *mu.frozen))
    np.testing.assert_array_equal(
        mu.module.layers[0].weight, opt_state[0].mu.module.layers[0].weight
    )
    params = eqx.filter(new, eqx.is_array)
    with jax.numpy_dtype_promotion("standard"):
        updates, _ = case.optimizer.update(g, result.opt_state, params)
    stepped = eqx.apply_updates(new, updates)
    np.testing.assert_array_equal(stepped.module.layers[2].weight, new.module.layers[2].weight)
    np.testing.assert_array_equal(stepped.frozen[2], new.frozen[2])
    assert not np.array_equal(stepped.fresh[2], new.fresh[2])
    # once the new head has moved away from its frozen twin, the gate still gets no gradient:
    # an optimizer never moves it off 1
    g = _grads(stepped, x)
    assert float(g.active) == 0.0
    assert any(np.any(np.asarray(a)) for a in g.fresh)


def test_residual_layernorm_block_injection(residual_case):
    """The whole block and the output layer as the head of a LayerNorm residual network: the
    output is kept at injection (≤ 1e-6), then only the new head and the input layer learn."""
    case = residual_case
    assert case.model.head_paths == tuple(
        f".{layer}.{p}" for layer in ("up", "norm", "down", "out") for p in ("weight", "bias")
    )
    x = jax.random.normal(jax.random.key(3), (64, 3))
    params = eqx.filter(case.model, eqx.is_array)
    result = case.run(case.model, case.optimizer.init(params), jax.random.key(4), AT)
    probe = jax.random.normal(jax.random.key(5), (128, 3))
    change = jax.vmap(result.model)(probe) - jax.vmap(case.model)(probe)
    assert float(jnp.max(jnp.abs(change))) <= 1e-6
    assert not np.allclose(result.model.fresh[0], case.model.module.up.weight)
    g = _grads(result.model, x)
    old = g.module
    for a in (old.up.weight, old.norm.weight, old.down.bias, old.out.weight, *g.frozen):
        assert not np.any(np.asarray(a))
    assert all(np.any(np.asarray(a)) for a in g.fresh)
    assert np.any(np.asarray(old.inp.weight))


def test_a_target_the_anatomy_cannot_find_fails_before_any_work():
    with pytest.raises(ValueError) as err:
        ns.injectable(Residual(jax.random.key(0)), jnp.zeros(3), groups=("head",))
    message = str(err.value)
    assert "injection target head" in message and "inp, up, down, out" in message
    with pytest.raises(ValueError, match=r"layers=4 is invalid.*from 1 to 3"):
        ns.injectable(mlp(jax.random.key(0)), jnp.zeros(3), layers=4)
    with pytest.raises(ValueError, match="at=0 is invalid"):
        ns.PlasticityInjection(at=0)


def test_refusals_at_the_step(mlp_case):
    plain = mlp(jax.random.key(0))
    anatomy = ns.anatomy(plain, jnp.zeros(3))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"has no ns\.Injected part"):
        mlp_case.strategy.step(anatomy, ns.Operand(plain, key, AT, init=mlp), None, ns.EmptyState())
    case, model = mlp_case, mlp_case.model
    adamw = optax.adamw(1e-3, weight_decay=1e-2)
    opt_state = adamw.init(eqx.filter(model, eqx.is_array))
    with pytest.raises(ValueError, match="weight decay"):
        case.strategy.step(
            case.anatomy,
            ns.Operand(model, key, AT, init=case.make, optimizer=adamw, opt_state=opt_state),
            None,
            ns.EmptyState(),
        )
    with pytest.raises(TypeError, match="constructor"):
        case.strategy.step(
            case.anatomy, ns.Operand(model, key, AT, init=ns.lecun_normal()), None, ns.EmptyState()
        )
