"""What the anatomy refuses: each error names the operation, its source line and the way out,
and no model maps with a parameter silently left out or an entry silently given one owner."""

import re
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neurosurgery as ns

HERE = r"\S*test_anatomy_refusals\.py:\d+"
WAY_OUT = r"__neuron_groups__.*fn="


def linears(*shapes):
    """`Linear(a, b)` for each `(a, b)`."""
    keys = jax.random.split(jax.random.key(0), len(shapes))
    return [eqx.nn.Linear(a, b, key=k) for (a, b), k in zip(shapes, keys, strict=True)]


class Two(eqx.Module):
    a: eqx.nn.Linear
    o: eqx.nn.Linear


class Pool(Two):
    def __call__(self, x):
        return self.o(eqx.nn.MaxPool1d(2, 2)(jax.nn.relu(self.a(x))[None])[0])


class Pick(Two):
    def __call__(self, x, i):
        return self.o(jax.lax.dynamic_slice(jax.nn.relu(self.a(x)), (i,), (2,)))


class Callback(Two):
    def __call__(self, x):
        out = jax.ShapeDtypeStruct((4,), jnp.float32)
        return self.o(jax.pure_callback(np.tanh, out, self.a(x)))


class ParamCallback(Two):
    def __call__(self, x):
        out = jax.ShapeDtypeStruct((4, 3), jnp.float32)
        w = jax.pure_callback(lambda a, b: a, out, self.a.weight, x)
        return self.o(jax.nn.relu(w @ x))


class SelfGate(Two):
    def __call__(self, x):
        h = jnp.tanh(self.a(x))
        return self.o(h * h[0])  # unit 0 multiplied into every unit of its own layer


class Hyper(Two):
    def __call__(self, x, w):
        return self.o(jnp.tanh(w @ jax.nn.relu(self.a(x))))  # w computed from the input


@pytest.mark.parametrize(
    "model, inputs, message",
    [
        (
            Pool(*linears((3, 4), (2, 1))),
            (jnp.zeros(3),),
            r"`reduce_window_max`.*pools across units",
        ),
        (
            Pick(*linears((3, 4), (2, 1))),
            (jnp.zeros(3), jnp.int32(1)),
            r"`dynamic_slice` at " + HERE + r".*indices computed from the input",
        ),
        (
            Callback(*linears((3, 4), (4, 1))),
            (jnp.zeros(3),),
            r"`pure_callback` at " + HERE + ".*`\\.a\\.weight`",
        ),
        (
            Hyper(*linears((3, 4), (1, 1))),
            (jnp.zeros(3), jnp.zeros((1, 4))),
            r"`dot_general` at " + HERE + r".*value computed from the input.*outgoing weights",
        ),
    ],
    ids=["pooling-across-units", "input-picks-units", "unknown-op-on-units", "units-times-input"],
)
def test_operations_on_units_that_cannot_be_followed(model, inputs, message):
    with pytest.raises(ns.AnatomyError, match=message + ".*" + WAY_OUT):
        ns.anatomy(model, *inputs)


class PoolUnits(eqx.Module):
    a: eqx.nn.Linear
    fc: eqx.nn.Linear

    def __call__(self, x):
        h = jax.nn.relu(self.a(x))[None]
        h = eqx.nn.MaxPool1d(2, 2)(h)  # the user's line the message must name
        return self.fc(h[0])


def test_an_operation_inside_a_library_is_named_with_the_users_line_that_called_it():
    """A refusal at an operation inside Equinox (a pooling layer's window, here across units)
    also names the user's own line that called it, the first frame outside JAX, Equinox and
    this package."""
    model = PoolUnits(*linears((6, 8), (4, 2)))
    line = next(
        i
        for i, text in enumerate(Path(__file__).read_text().splitlines(), start=1)
        if "the user's line the message must name" in text
    )
    caller = rf"called from \S*test_anatomy_refusals\.py:{line} \(PoolUnits\.__call__\)"
    with pytest.raises(
        ns.AnatomyError, match=r"`reduce_window_max` at \S*equinox\S*_pool\.py:\d+.*" + caller
    ):
        ns.anatomy(model, jnp.zeros(6))


def test_a_parameter_consumed_by_an_unknown_operation_is_an_error():
    with pytest.raises(
        ns.AnatomyError,
        match=r"`pure_callback` at " + HERE + r".*parameter\(s\) `\.a\.weight`.*no neuron group",
    ):
        ns.anatomy(ParamCallback(*linears((3, 4), (4, 1))), jnp.zeros(3))

    class Orthogonal(eqx.Module):
        w: jax.Array
        o: eqx.nn.Linear

        def __call__(self, x):
            q, _ = jnp.linalg.qr(self.w)  # a weight the tracer cannot attribute entry by entry
            return self.o(jax.nn.relu(q @ x))

    with pytest.raises(
        ns.AnatomyError, match=r"`dot_general` at " + HERE + r".*computed from `\.w`"
    ):
        ns.anatomy(
            Orthogonal(jnp.eye(4) + 1.0, eqx.nn.Linear(4, 1, key=jax.random.key(0))), jnp.zeros(4)
        )


def test_an_entry_with_two_owners_in_one_group_is_an_error():
    with pytest.raises(
        ns.AnatomyError,
        match=r"`\.o\.weight` would belong to two units of group 'a'.*`mul` at " + HERE,
    ):
        ns.anatomy(SelfGate(*linears((3, 4), (4, 1))), jnp.zeros(3))


def test_a_weight_read_with_two_unit_structures_is_an_error():
    class Tied(eqx.Module):
        w: jax.Array
        a: eqx.nn.Linear

        def __call__(self, x):
            return self.w.T @ jax.nn.relu(self.a(jax.nn.relu(self.w @ x)))

    with pytest.raises(ns.AnatomyError, match=r"`\.w` is read as the incoming weight of two"):
        ns.anatomy(Tied(jnp.ones((4, 3)), eqx.nn.Linear(4, 4, key=jax.random.key(0))), jnp.zeros(3))


class BNTrain(eqx.Module):
    a: eqx.nn.Linear
    bn: eqx.nn.BatchNorm
    o: eqx.nn.Linear

    def __call__(self, x, state):
        h, state = self.bn(self.a(x), state)
        return self.o(h), state


def test_batchnorm_in_training_mode_names_the_inference_mode_way():
    model, state = eqx.nn.make_with_state(BNTrain)(
        *linears((3, 4)), eqx.nn.BatchNorm(4, "batch", mode="batch"), *linears((4, 1))
    )
    inference = r"over a batch axis.*BatchNorm.*training mode.*eqx\.nn\.inference_mode"
    with pytest.raises(ns.AnatomyError, match=inference):
        ns.anatomy(model, jnp.zeros(3), state, fn=lambda m, x, s: m(x, s)[0])
    per_sample = lambda m, x, s: jax.vmap(lambda x: m(x, s)[0], axis_name="batch")(x)
    with pytest.raises(ns.AnatomyError, match=r"`psum` at .*_batch_norm\.py:\d+.*" + inference):
        ns.anatomy(model, jnp.zeros((2, 3)), state, fn=per_sample)
    mapped = ns.anatomy(
        eqx.nn.inference_mode(model), jnp.zeros(3), state, fn=lambda m, x, s: m(x, s)[0]
    )
    assert {s.path for s in mapped["a"].per_unit} == {".bn.weight", ".bn.bias"}


class Flagged(eqx.Module):
    inp: jax.Array
    stack: jax.Array

    def __call__(self, x, *, inference=False):  # a Python flag, as eqx layers take them
        h = jax.nn.relu(self.inp @ x)
        return h if inference else 2 * h

    def __neuron_groups__(self):
        return [ns.DeclaredGroup("input", incoming=[(".inp", 0)], outgoing=[(".stack", 1)])]


def test_declared_groups_on_a_module_called_with_a_python_flag():
    class Outer(eqx.Module):
        f: Flagged
        head: eqx.nn.Linear

        def __call__(self, x):
            return self.head(self.f(x, inference=True))

    anatomy = ns.anatomy(
        Outer(Flagged(jnp.ones((4, 3)), jnp.ones((2, 4))), *linears((4, 1))), jnp.zeros(3)
    )
    assert anatomy.names == ("head", "f.input") and anatomy["f.input"].unit_shape == (4,)


def test_no_parameter_is_left_out_of_a_scanned_recurrent_model():
    """Every weight of a GRU scanned over a sequence and of its MLP head belongs to a group."""

    class Recurrent(eqx.Module):
        cell: eqx.nn.GRUCell
        head: eqx.nn.MLP

        def __call__(self, xs):
            h, _ = jax.lax.scan(lambda h, x: (self.cell(x, h), None), jnp.zeros(5), xs)
            return self.head(h)

    k1, k2 = jax.random.split(jax.random.key(0))
    model = Recurrent(eqx.nn.GRUCell(3, 5, key=k1), eqx.nn.MLP(5, 2, 6, 1, key=k2))
    anatomy = ns.anatomy(model, jnp.zeros((4, 3)))
    owned = {s.path for g in anatomy for s in (*g.incoming, *g.per_unit, *g.outgoing)}
    assert owned == set(anatomy.leaf_paths)


class Maxout(Two):
    def __call__(self, x):
        return self.o(jnp.max(jax.nn.relu(self.a(x)).reshape(2, 2), axis=1))


class SumReadout(eqx.Module):
    a: eqx.nn.Linear

    def __call__(self, x):
        return jnp.sum(jax.nn.relu(self.a(x)))


class ChannelMax(eqx.Module):
    c: eqx.nn.Conv2d
    o: eqx.nn.Linear

    def __call__(self, x):
        return self.o(jnp.max(jax.nn.relu(self.c(x)), axis=0).reshape(-1))


@pytest.mark.parametrize(
    "model, example",
    [
        (Maxout(*linears((3, 4), (2, 2))), jnp.zeros(3)),
        (SumReadout(*linears((3, 4))), jnp.zeros(3)),
        (
            ChannelMax(eqx.nn.Conv2d(2, 4, 1, key=jax.random.key(1)), *linears((9, 2))),
            jnp.zeros((2, 3, 3)),
        ),
    ],
    ids=["maxout", "sum-readout", "max-over-channels"],
)
def test_units_that_reach_the_outputs_only_through_a_reduction_are_not_reset(model, example):
    """A max or sum over units hands nothing downstream a unit's own weights: there is no
    outgoing entry to zero, so the anatomy says so and leaves the group out of resets; forced,
    the reset visibly changes the outputs."""
    anatomy = ns.anatomy(model, example)
    (group,) = anatomy.hidden
    assert group.outgoing == () and group.normalized and not group.resettable
    assert re.search(rf"only through `reduce_(max|sum)` at {HERE}", group.no_reset)
    assert group.name in anatomy.summary() and "normalised" in anatomy.summary()
    masks = {group.name: jnp.ones(group.unit_shape, bool)}
    init = ns.Initializer(jax.nn.initializers.lecun_normal)
    assert not ns.reset(anatomy, model, masks, jax.random.key(2), init=init).applied
    forced = ns.reset(anatomy, model, masks, jax.random.key(2), init=init, include_shared=True)
    assert not jnp.allclose(forced.model(example + 1.0), model(example + 1.0))


class Temperature(Two):
    t: jax.Array
    unused: jax.Array

    def __call__(self, x):
        return self.o(jax.nn.relu(self.a(x))[:3]) / self.t


def test_parameters_in_no_group_are_listed():
    """A learned temperature and a parameter the call never reads belong to no group: the
    anatomy lists them rather than leave them unsaid (a unit that reaches nothing is still a
    unit of its layer)."""
    a, o = linears((3, 4), (3, 2))
    anatomy = ns.anatomy(Temperature(a, o, jnp.ones(()), jnp.zeros(5)), jnp.zeros(3))
    assert anatomy.ungrouped == {".t": (1, 1), ".unused": (5, 5)}
    assert anatomy["a"].n_units == 4
    assert "in no group (never reset): .t (1 of 1 entries), .unused (5 of 5" in anatomy.summary()
