"""Follow units through a flat traced program.

Every value of the program carries, element by element, two integer labels:

* a *unit label*: which hidden unit(s) the element belongs to (-1: none). A dense or convolution
  operation whose weight is a parameter creates new units; elementwise and structural operations
  move labels along; adding two labelled values (a residual connection) yields *mixed* labels that
  stand for several units at once;
* a *parameter label*: which parameter element the element was read from (-1: none), carried
  through the structural operations applied to a parameter (transpose, reshape, broadcast).

Where the two meet, the relation is recorded: a weight read by a unit-creating operation is the
unit's incoming weight; a weight contracted with labelled elements is their outgoing weight; a
parameter combined elementwise with labelled elements is a per-unit parameter (bias, norm scale,
learnable activation slope). Nothing here depends on names, attribute order or module types.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import AnatomyError
from ._graph import DECLARED_PREFIX, Const, Graph, Op

UNARY = {
    "neg",
    "exp",
    "exp2",
    "log",
    "log1p",
    "expm1",
    "tanh",
    "logistic",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "sinh",
    "cosh",
    "asinh",
    "acosh",
    "atanh",
    "abs",
    "sign",
    "floor",
    "ceil",
    "round",
    "sqrt",
    "rsqrt",
    "cbrt",
    "square",
    "integer_pow",
    "erf",
    "erfc",
    "erf_inv",
    "lgamma",
    "digamma",
    "is_finite",
    "not",
    "population_count",
    "clz",
    "imag",
    "real",
    "conj",
}
PASS = {
    "convert_element_type",
    "copy",
    "copy_p",
    "reduce_precision",
    "stop_gradient",
    "optimization_barrier",
}
BINARY = {
    "add",
    "add_any",
    "sub",
    "mul",
    "div",
    "max",
    "min",
    "pow",
    "atan2",
    "rem",
    "and",
    "or",
    "xor",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "nextafter",
    "select_n",
    "clamp",
    "shift_left",
    "shift_right_logical",
    "shift_right_arithmetic",
}
STRUCTURAL = {
    "reshape",
    "transpose",
    "broadcast_in_dim",
    "squeeze",
    "expand_dims",
    "rev",
    "slice",
    "concatenate",
    "pad",
    "dynamic_slice",
    "gather",
    "split",
    "dynamic_update_slice",
    "scatter",
}
#: operands whose elements move into the result (default: the first); the others must be constant
LABEL_OPERANDS = {"dynamic_update_slice": (0, 1), "scatter": (0, 2)}
CHAIN_STRUCTURAL = {"reshape", "transpose", "squeeze", "expand_dims"}
REDUCTIONS = {
    "reduce_sum",
    "reduce_max",
    "reduce_min",
    "reduce_prod",
    "reduce_and",
    "reduce_or",
    "argmax",
    "argmin",
}

NONE = -1


@dataclasses.dataclass
class Value:
    """Labels of one value of the program."""

    units: np.ndarray | None  # int32 unit labels, value's shape
    params: np.ndarray | None  # int32 parameter-element ids, value's shape
    dep_input: bool
    dep_param: bool
    const: np.ndarray | None = None  # the value itself, for values computed from constants only


@dataclasses.dataclass
class RawGroup:
    """A unit-creating operation and what was learnt about its units."""

    first: int  # first unit id
    unit_shape: tuple[int, ...]
    op: Op
    weight_leaf: int
    output: int  # value id of the operation's output
    chain: dict[int, tuple[str, list[int]]] = dataclasses.field(default_factory=dict)
    normalized: bool = False  # an input-dependent statistic (a norm's mean/variance) acts on it

    @property
    def size(self) -> int:
        return int(np.prod(self.unit_shape))


@dataclasses.dataclass
class Trace:
    """Everything the label propagation found, as flat relations between ids."""

    groups: list[RawGroup]
    incoming: list[tuple[np.ndarray, np.ndarray]]  # (unit label, param element)
    bias: list[tuple[np.ndarray, np.ndarray]]
    per_unit: list[tuple[np.ndarray, np.ndarray]]
    scale: list[tuple[np.ndarray, np.ndarray]]
    outgoing: list[tuple[np.ndarray, np.ndarray]]
    mixes: dict[int, frozenset[int]]
    output_labels: set[int]
    values: list[Value]
    sinks: dict[int, list[int]]  # group index -> chain values used outside the chain


class Tracer:
    """Propagates labels through a flat graph; see the module docstring."""

    def __init__(
        self, graph: Graph, leaf_offsets: list[int], n_param_leaves: int, leaf_paths: list[str]
    ):
        self.graph = graph
        self.leaf_offsets = leaf_offsets
        self.leaf_paths = leaf_paths
        self.next_label = 0
        self.unit_group: dict[int, int] = {}
        self.mixes: dict[int, frozenset[int]] = {}
        self.mix_ids: dict[frozenset[int], int] = {}
        self.groups: list[RawGroup] = []
        self.chain_of: dict[int, int] = {}
        self.incoming: list[tuple[np.ndarray, np.ndarray]] = []
        self.bias: list[tuple[np.ndarray, np.ndarray]] = []
        self.per_unit: list[tuple[np.ndarray, np.ndarray]] = []
        self.scale: list[tuple[np.ndarray, np.ndarray]] = []
        self.outgoing: list[tuple[np.ndarray, np.ndarray]] = []
        self.values: list[Value | None] = [None] * len(graph.shapes)
        for i, vid in enumerate(graph.inputs):
            shape = graph.shapes[vid]
            if i < n_param_leaves:
                ids = leaf_offsets[i] + np.arange(int(np.prod(shape)), dtype=np.int32)
                self.values[vid] = Value(None, ids.reshape(shape), False, True)
            else:
                self.values[vid] = Value(None, None, True, False)

    # ---- helpers -------------------------------------------------------------------------
    def members(self, label: int) -> frozenset[int]:
        return self.mixes.get(label, frozenset((label,)))

    def mix(self, a: int, b: int) -> int:
        key = self.members(a) | self.members(b)
        if len(key) == 1:
            return next(iter(key))
        if key not in self.mix_ids:
            self.mix_ids[key] = self.next_label
            self.mixes[self.next_label] = key
            self.next_label += 1
        return self.mix_ids[key]

    def value(self, atom: int | Const) -> Value:
        if isinstance(atom, Const):
            return Value(None, None, False, False, atom.value)
        v = self.values[atom]
        assert v is not None
        return v

    def shape(self, atom: int | Const) -> tuple[int, ...]:
        return tuple(atom.value.shape) if isinstance(atom, Const) else self.graph.shapes[atom]

    def where(self, op: Op) -> str:
        return f"`{op.name}` at {op.source}"

    def describe_units(self, labels: np.ndarray) -> str:
        groups = set()
        for lab in np.unique(labels[labels >= 0]):
            for u in self.members(int(lab)):
                groups.add(self.unit_group[u])
        names = sorted({self.leaf_paths[self.groups[g].weight_leaf] for g in groups})
        return ", ".join(f"units produced by `{n}`" for n in names)

    def cannot_follow(self, op: Op, labels: np.ndarray, why: str) -> AnatomyError:
        return AnatomyError(
            f"The tracer cannot follow {self.where(op)}: it receives the {self.describe_units(labels)}"
            f" and {why}. Declare the neuron groups of the module that performs this operation "
            "explicitly (give the module a `__neuron_groups__` method, see "
            "`neurosurgery.DeclaredGroup`), or express the operation with dense/conv layers and "
            "elementwise functions."
        )

    def label_operands(self, op: Op) -> list[int]:
        """Positions of the operands whose elements move into the result."""
        if op.name == "concatenate":
            return list(range(len(op.inputs)))
        return list(LABEL_OPERANDS.get(op.name, (0,)))

    def struct_apply(self, op: Op, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Apply a structural primitive to integer label arrays (one per result)."""
        positions = self.label_operands(op)
        ins: list[Any] = []
        for i, atom in enumerate(op.inputs):
            if i in positions:
                ins.append(jnp.asarray(arrays[positions.index(i)], dtype=jnp.int32))
            elif op.name == "pad":
                ins.append(jnp.asarray(NONE, dtype=jnp.int32))  # padding carries no unit
            elif (const := self.value(atom).const) is not None:
                ins.append(jnp.asarray(const))
            else:
                raise LookupError  # indices computed from the input
        subfuns, params = op.primitive.get_bind_params(op.params)
        if "sharding" in params:
            params["sharding"] = None
        out = op.primitive.bind(*subfuns, *ins, **params)
        outs = out if op.primitive.multiple_results else [out]
        return [np.asarray(o, dtype=np.int32) for o in outs]

    # ---- main loop -----------------------------------------------------------------------
    def run(self) -> Trace:
        with jax.ensure_compile_time_eval(), jax.default_device(jax.devices("cpu")[0]):
            for op in self.graph.ops:
                self.step(op)
        outputs: set[int] = set()
        for atom in self.graph.outputs:
            v = self.value(atom)
            if v.units is not None:
                for lab in np.unique(v.units[v.units >= 0]):
                    outputs |= self.members(int(lab))
        sinks: dict[int, list[int]] = {g: [] for g in range(len(self.groups))}
        for op in self.graph.ops:
            outs_in_chain = {self.chain_of.get(o) for o in op.outputs}
            for atom in op.inputs:
                if isinstance(atom, int) and atom in self.chain_of:
                    g = self.chain_of[atom]
                    if g not in outs_in_chain or len(outs_in_chain) != 1:
                        sinks[g].append(atom)
        for atom in self.graph.outputs:
            if isinstance(atom, int) and atom in self.chain_of:
                sinks[self.chain_of[atom]].append(atom)
        values = [v if v is not None else Value(None, None, False, False) for v in self.values]
        return Trace(
            self.groups,
            self.incoming,
            self.bias,
            self.per_unit,
            self.scale,
            self.outgoing,
            self.mixes,
            outputs,
            values,
            sinks,
        )

    def fold(self, op: Op, ins: list[Value]) -> bool:
        """Evaluate an operation on constants (index arithmetic, masks) at trace time."""
        if any(v.const is None for v in ins) or op.name in ("jit", "pjit"):
            return False
        if sum(int(np.prod(self.graph.shapes[o], dtype=int)) for o in op.outputs) > 1_000_000:
            return False
        subfuns, params = op.primitive.get_bind_params(op.params)
        try:
            out = op.primitive.bind(*subfuns, *[jnp.asarray(v.const) for v in ins], **params)
        except Exception:  # pragma: no cover - leave such values unknown
            return False
        outs = out if op.primitive.multiple_results else [out]
        for vid, value in zip(op.outputs, outs, strict=True):
            self.values[vid] = Value(None, None, False, False, np.asarray(value))
        return True

    def step(self, op: Op) -> None:
        ins = [self.value(a) for a in op.inputs]
        if self.fold(op, ins):
            return None
        labelled = [v.units is not None and bool((v.units >= 0).any()) for v in ins]
        dep_input = any(v.dep_input for v in ins)
        dep_param = any(v.dep_param for v in ins)
        name = op.name
        if name == "dot_general" and dep_input and dep_param:
            return self.dot_general(op, ins)
        if name == "conv_general_dilated" and dep_input and dep_param:
            return self.conv(op, ins)
        if name in ("dot_general", "conv_general_dilated") and sum(v.dep_input for v in ins) == 1:
            # A weight that is a constant, not a parameter of this model (e.g. another network
            # closed over): the units are consumed here, with no outgoing entries to record.
            for out in op.outputs:
                self.values[out] = Value(None, None, True, False)
            return None
        if name in ("jit", "pjit") and str(op.params.get("name", "")).startswith(DECLARED_PREFIX):
            return self.declared_call(op, ins)
        if name in UNARY or name in PASS or name in BINARY:
            return self.elementwise(op, ins)
        if name in STRUCTURAL:
            return self.structural(op, ins)
        if name in REDUCTIONS:
            return self.reduction(op, ins)
        if any(labelled):
            i = labelled.index(True)
            units = ins[i].units
            assert units is not None
            raise self.cannot_follow(
                op, units, "it is not an operation whose effect on units is known"
            )
        for out in op.outputs:
            self.values[out] = Value(None, None, dep_input, dep_param and not dep_input)

    # ---- operation kinds -------------------------------------------------------------------
    def new_group(self, op: Op, unit_shape: tuple[int, ...], weight_leaf: int) -> RawGroup:
        group = RawGroup(self.next_label, unit_shape, op, weight_leaf, op.outputs[0])
        for u in range(group.size):
            self.unit_group[self.next_label + u] = len(self.groups)
        self.next_label += group.size
        self.groups.append(group)
        self.chain_of[group.output] = len(self.groups) - 1
        group.chain[group.output] = ("producer", [])
        return group

    def leaf_of(self, params: np.ndarray) -> int:
        ids = params[params >= 0]
        if ids.size == 0:
            return -1
        return int(np.searchsorted(self.leaf_offsets, int(ids.min()), side="right") - 1)

    def record_outgoing(self, op: Op, units: np.ndarray, params: np.ndarray) -> None:
        """`units`/`params` are (B, K, F) arrays: batch, contracted, free positions."""
        if units.shape[2] > 1 and not (units == units[:, :, :1]).all():
            raise self.cannot_follow(op, units, "its unit labels vary along non-contracted axes")
        lab = np.broadcast_to(units[:, :, :1], params.shape)
        keep = (lab >= 0) & (params >= 0)
        if keep.any():
            self.outgoing.append((lab[keep].copy(), params[keep].copy()))

    def dot_general(self, op: Op, ins: list[Value]) -> None:
        (contract, batch) = op.params["dimension_numbers"]
        lhs, rhs = ins
        if lhs.dep_input and rhs.dep_input:
            labels = [v.units for v in ins if v.units is not None and (v.units >= 0).any()]
            if labels:
                raise self.cannot_follow(op, labels[0], "it contracts two activations")
            self.values[op.outputs[0]] = Value(None, None, True, False)
            return
        p_side = 0 if not lhs.dep_input else 1
        act, par = (rhs, lhs) if p_side == 0 else (lhs, rhs)
        a_shape, p_shape = self.shape(op.inputs[1 - p_side]), self.shape(op.inputs[p_side])
        a_contract, p_contract = contract[1 - p_side], contract[p_side]
        a_batch, p_batch = batch[1 - p_side], batch[p_side]
        a_free = [d for d in range(len(a_shape)) if d not in a_contract and d not in a_batch]
        p_free = [d for d in range(len(p_shape)) if d not in p_contract and d not in p_batch]
        p_params = par.params
        if p_params is None or (p_params < 0).all():
            # A computed weight we cannot attribute: the result is an activation.
            self.values[op.outputs[0]] = Value(None, None, True, False)
            return
        # Outgoing: activation units at contracted positions meet the weight elements there.
        if act.units is not None and (act.units >= 0).any():
            a_t = np.transpose(act.units, [*a_batch, *a_contract, *a_free])
            p_t = np.transpose(p_params, [*p_batch, *p_contract, *p_free])
            nb = int(np.prod([a_shape[d] for d in a_batch], dtype=int))
            nk = int(np.prod([a_shape[d] for d in a_contract], dtype=int))
            self.record_outgoing(op, a_t.reshape(nb, nk, -1), p_t.reshape(nb, nk, -1))
        # New units: one per (batch, weight free) position.
        unit_shape = tuple(p_shape[d] for d in (*p_batch, *p_free))
        group = self.new_group(op, unit_shape, self.leaf_of(p_params))
        idx = np.indices(p_shape)
        unit_of_param = np.asarray(
            np.ravel_multi_index([idx[d] for d in (*p_batch, *p_free)], unit_shape)
        )
        keep = p_params >= 0
        self.incoming.append(((group.first + unit_of_param)[keep], p_params[keep]))
        out_shape = self.graph.shapes[op.outputs[0]]
        oidx = np.indices(out_shape)
        nb = len(p_batch)
        first_free = nb if p_side == 0 else nb + len(a_free)
        coords = [oidx[i] for i in range(nb)]
        coords += [oidx[first_free + i] for i in range(len(p_free))]
        units = group.first + np.asarray(np.ravel_multi_index(coords, unit_shape), dtype=np.int32)
        self.values[op.outputs[0]] = Value(units, None, True, False)

    def conv(self, op: Op, ins: list[Value]) -> None:
        lhs, rhs = ins
        if rhs.dep_input or rhs.params is None:
            raise AnatomyError(
                f"{self.where(op)} convolves with a kernel computed from the input; only "
                "convolutions with a parameter kernel are mapped. Declare the groups explicitly."
            )
        dn = op.params["dimension_numbers"]
        lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
        groups = int(op.params.get("feature_group_count", 1))
        if int(op.params.get("batch_group_count", 1)) != 1:
            raise AnatomyError(f"{self.where(op)} uses batch_group_count; it is not mapped.")
        kernel = np.moveaxis(rhs.params, [rhs_spec[0], rhs_spec[1]], [0, 1])
        n_out, n_in_per = kernel.shape[0], kernel.shape[1]
        if lhs.units is not None and (lhs.units >= 0).any():
            chan = np.moveaxis(lhs.units, lhs_spec[1], 0).reshape(lhs.units.shape[lhs_spec[1]], -1)
            if not (chan == chan[:, :1]).all():
                raise self.cannot_follow(op, lhs.units, "its unit labels vary across positions")
            per_out = n_out // groups
            for c, lab in enumerate(chan[:, 0]):
                if lab < 0:
                    continue
                g, i = divmod(c, n_in_per)
                elems = kernel[g * per_out : (g + 1) * per_out, i].ravel()
                self.outgoing.append((np.full(elems.shape, lab, np.int32), elems.copy()))
        group = self.new_group(op, (n_out,), self.leaf_of(rhs.params))
        unit_of_param = np.broadcast_to(
            np.arange(n_out).reshape((-1,) + (1,) * (kernel.ndim - 1)), kernel.shape
        )
        keep = kernel >= 0
        self.incoming.append(((group.first + unit_of_param)[keep], kernel[keep]))
        out_shape = self.graph.shapes[op.outputs[0]]
        shape = [1] * len(out_shape)
        shape[out_spec[1]] = n_out
        units = np.broadcast_to(
            group.first + np.arange(n_out, dtype=np.int32).reshape(shape), out_shape
        ).copy()
        self.values[op.outputs[0]] = Value(units, None, True, False)

    def elementwise(self, op: Op, ins: list[Value]) -> None:
        out_shape = self.graph.shapes[op.outputs[0]]
        units = None
        chain_groups: set[int] = set()
        all_chain = True
        for atom, v in zip(op.inputs, ins, strict=True):
            if v.units is None:
                continue
            u = np.broadcast_to(v.units, out_shape)
            if isinstance(atom, int) and atom in self.chain_of:
                chain_groups.add(self.chain_of[atom])
            elif (u >= 0).any():
                all_chain = False
            if units is None:
                units = u.copy()
                continue
            both = (units >= 0) & (u >= 0) & (units != u)
            units = np.where(units < 0, u, units)
            if both.any():
                pairs = np.unique(np.stack([units[both], u[both]]), axis=1)
                table = {(int(a), int(b)): self.mix(int(a), int(b)) for a, b in pairs.T}
                units[both] = [
                    table[(int(a), int(b))] for a, b in zip(units[both], u[both], strict=True)
                ]
        dep_input = any(v.dep_input for v in ins)
        dep_param = any(v.dep_param for v in ins)
        params = None
        if not dep_input:
            for v in ins:
                if v.params is not None:
                    params = np.broadcast_to(v.params, out_shape).copy()
                    break
        # Per-unit parameters: a parameter operand meeting labelled elements.
        kind = "act"
        normalizing = False
        if units is not None and (units >= 0).any():
            for v in ins:
                if v.dep_param and not v.dep_input:
                    kind = "pre"
                    if v.params is not None:
                        self.record_per_unit(op, ins, units, np.broadcast_to(v.params, out_shape))
                elif v.dep_input and (v.units is None or not (v.units >= 0).any()):
                    kind = "pre"
                    normalizing = True
        if op.name in PASS:
            kind = "pass"
        self.values[op.outputs[0]] = Value(units, params, dep_input, dep_param and not dep_input)
        if len(chain_groups) == 1 and all_chain and units is not None:
            g = chain_groups.pop()
            if all(self.unit_group.get(int(lab), -1) == g for lab in np.unique(units[units >= 0])):
                preds = [a for a in op.inputs if isinstance(a, int) and self.chain_of.get(a) == g]
                self.chain_of[op.outputs[0]] = g
                self.groups[g].chain[op.outputs[0]] = (kind, preds)
                self.groups[g].normalized |= normalizing

    def record_per_unit(self, op: Op, ins: list[Value], units: np.ndarray, params: np.ndarray):
        keep = (units >= 0) & (params >= 0)
        if not keep.any():
            return
        pair = (units[keep].copy(), params[keep].copy())
        # A parameter added right after the unit-creating operation is the unit's bias.
        producer_fed = any(
            isinstance(a, int)
            and a in self.chain_of
            and self.groups[self.chain_of[a]].chain[a][0] in ("producer",)
            for a in op.inputs
        )
        if op.name in ("add", "sub", "add_any") and producer_fed:
            self.bias.append(pair)
        elif op.name in ("mul", "div"):
            self.scale.append(pair)
        else:
            self.per_unit.append(pair)

    def structural(self, op: Op, ins: list[Value]) -> None:
        first = op.inputs[0]
        arrays = [op.inputs[i] for i in self.label_operands(op)]
        results: dict[str, list[np.ndarray | None]] = {}
        for field in ("units", "params"):
            labs = [getattr(self.value(a), field) for a in arrays]
            if all(x is None for x in labs):
                results[field] = [None] * len(op.outputs)
                continue
            filled = [
                x if x is not None else np.full(self.shape(a), NONE, np.int32)
                for a, x in zip(arrays, labs, strict=True)
            ]
            try:
                results[field] = list(self.struct_apply(op, filled))
            except LookupError:
                if field == "units" and any((x >= 0).any() for x in filled):
                    raise self.cannot_follow(
                        op,
                        next(x for x in filled if (x >= 0).any()),
                        "its indices depend on the input",
                    ) from None
                results[field] = [None] * len(op.outputs)
        dep_input = any(v.dep_input for v in ins)
        dep_param = any(v.dep_param for v in ins)
        for k, out in enumerate(op.outputs):
            units, params = results["units"][k], results["params"][k]
            self.values[out] = Value(
                units, params if not dep_input else None, dep_input, dep_param and not dep_input
            )
        # Shape-only moves of a unit chain stay in the chain (e.g. squeeze after a conv).
        out = op.outputs[0]
        if (
            op.name in CHAIN_STRUCTURAL
            and isinstance(first, int)
            and first in self.chain_of
            and results["units"][0] is not None
        ):
            g = self.chain_of[first]
            self.chain_of[out] = g
            kind = self.groups[g].chain[first][0]
            self.groups[g].chain[out] = ("producer" if kind == "producer" else "pass", [first])

    def reduction(self, op: Op, ins: list[Value]) -> None:
        """Labels survive a reduction only where they are constant along the reduced axes."""
        v = ins[0]
        axes = tuple(op.params.get("axes", ()))
        results: dict[str, np.ndarray | None] = {}
        for field in ("units", "params"):
            red = getattr(v, field)
            for a in sorted(axes, reverse=True):
                if red is None:
                    break
                constant = (red == np.take(red, [0], axis=a)).all()
                red = np.asarray(np.take(red, 0, axis=a)) if constant else None
            results[field] = red
        params = results["params"] if not v.dep_input else None
        self.values[op.outputs[0]] = Value(
            results["units"], params, v.dep_input, v.dep_param and not v.dep_input
        )

    def declared_call(self, op: Op, ins: list[Value]) -> None:
        """A module with declared groups: units may not flow in, nothing flows out."""
        for v in ins:
            if v.units is not None and (v.units >= 0).any():
                raise AnatomyError(
                    f"The {self.describe_units(v.units)} flow into a module that declares its own "
                    "neuron groups, so their outgoing weights are unknown. Declare the groups on "
                    "the enclosing module instead, so that producer and consumers are declared "
                    "together."
                )
        dep_input = any(v.dep_input for v in ins)
        for out in op.outputs:
            self.values[out] = Value(None, None, dep_input, not dep_input)
