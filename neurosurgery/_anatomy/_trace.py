"""Follow units through a flat traced program (see `_trace_core` for what each value carries).

A dense, convolution or lookup operation whose weight is a parameter creates units; elementwise
and structural operations move their labels along; where two labelled values meet element by
element the meeting is recorded (an addition of two layers' outputs is a residual stream, a
product pairs a gate with the unit it gates); a parameter combined elementwise with labelled
elements is a per-unit parameter (bias, norm scale, learnable slope); a reduction over units is a
statistic of them (a norm's mean). Any other operation on units, or on parameters together with
the input, stops the anatomy with an error that names it, its source line and the way out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import AnatomyError
from ._graph import CONTROL, DECLARED_PREFIX, Op, _const, bind
from ._labels import NONE, lift
from ._trace_core import PFactor, Value, params_leaves
from ._trace_flow import FlowOps
from ._trace_struct import ALONG_AXIS, STRUCTURAL, WINDOWS

UNARY = {"neg", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sin", "cos", "tan"}
UNARY |= {"asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "abs", "sign"}
UNARY |= {"floor", "ceil", "round", "sqrt", "rsqrt", "cbrt", "square", "integer_pow", "erf"}
UNARY |= {"erfc", "erf_inv", "lgamma", "digamma", "is_finite", "not", "population_count", "clz"}
UNARY |= {"imag", "real", "conj", "bitcast_convert_type"}
PASS = {"convert_element_type", "copy", "copy_p", "reduce_precision", "stop_gradient"}
PASS |= {"optimization_barrier", "device_put"}
BINARY = {"add", "add_any", "sub", "mul", "div", "max", "min", "pow", "atan2", "rem", "and"}
BINARY |= {"or", "xor", "eq", "ne", "lt", "le", "gt", "ge", "nextafter", "select_n", "clamp"}
BINARY |= {"shift_left", "shift_right_logical", "shift_right_arithmetic"}
ADDITIVE = {"add", "add_any", "sub"}
COMPARISONS = {"eq", "ne", "lt", "le", "gt", "ge"}
REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and"}
REDUCTIONS |= {"reduce_or", "reduce_xor", "argmax", "argmin"}
COLLECTIVES = {"psum", "psum2", "pmax", "pmin", "all_gather", "all_to_all", "ppermute"}
COLLECTIVES |= {"axis_index", "pbroadcast", "psum_scatter", "reduce_scatter", "pmean"}


def collective_error(what: str) -> AnatomyError:
    return AnatomyError(
        f"The model computes {what} over a batch axis (`axis_name`), as BatchNorm does in "
        "training mode. The anatomy maps one sample: map the model in inference mode, with its "
        "state as an example input, e.g. `ns.anatomy(eqx.nn.inference_mode(model), x, state, "
        "fn=lambda m, x, s: m(x, s)[0])`; the neuron groups are the same in both modes."
    )


class Tracer(FlowOps):
    """Propagates labels through a flat graph."""

    def run(self) -> Tracer:
        with jax.ensure_compile_time_eval(), jax.default_device(jax.devices("cpu")[0]):
            self.run_ops(self.graph.ops)
        return self

    def run_ops(self, ops: list[Op]) -> None:
        for op in ops:
            for out in op.outputs:
                self.producer[out] = op
            self.step(op)

    def output_labels(self) -> set[int]:
        out: set[int] = set()
        for atom in self.graph.outputs:
            for lab in self.labels_of(self.value(atom).units):
                out |= self.members(int(lab))
        for labels in self.read_out:
            for lab in labels:
                out |= self.members(int(lab))
        return out

    # ---- dispatch ----------------------------------------------------------------------------
    def step(self, op: Op) -> None:
        ins = [self.value(a) for a in op.inputs]
        name = op.name
        if name in CONTROL:
            return self.control(op, ins)
        if self.fold(op, ins):
            return None
        if any(v.noise for v in ins) and all(v.noise or v.const is not None for v in ins):
            for out in op.outputs:  # random draws: data without units
                self.set(out, Value(dep_input=True, noise=True))
            return None
        if name in ("jit", "pjit") and str(op.params.get("name", "")).startswith(DECLARED_PREFIX):
            return self.declared_call(op, ins)
        if name == "dot_general":
            return self.dot_general(op, ins)
        if name == "conv_general_dilated":
            return self.conv(op, ins)
        if name in UNARY or name in PASS or name in BINARY:
            return self.elementwise(op, ins)
        if name in STRUCTURAL:
            return self.structural(op, ins)
        if name in REDUCTIONS:
            return self.reduction(op, ins)
        if name in WINDOWS:
            return self.window(op, ins)
        if name in ALONG_AXIS:
            return self.along_axis(op, ins)
        if name in COLLECTIVES:
            raise collective_error(f"`{name}` at {op.source}")
        return self.unknown(op, ins)

    def fold(self, op: Op, ins: list[Value]) -> bool:
        """Evaluate an operation on constants (index arithmetic, masks) at trace time."""
        if any(v.const is None for v in ins) or op.name in ("jit", "pjit") or op.bodies:
            return False
        if sum(int(np.prod(self.graph.shapes[o], dtype=int)) for o in op.outputs) > 1_000_000:
            return False
        try:
            out = bind(op.primitive, op.params, [jnp.asarray(v.const) for v in ins])
        except Exception:  # pragma: no cover - leave such values unknown
            return False
        outs = out if op.primitive.multiple_results else [out]
        for vid, value in zip(op.outputs, outs, strict=True):
            self.set(vid, Value(const=_const(value)))
        return True

    def unknown(self, op: Op, ins: list[Value]) -> None:
        labelled = [v for v in ins if v.units]
        if labelled:
            raise self.cannot_follow(
                op, labelled[0].units, "it is not an operation whose effect on units is known"
            )
        dep_input = any(v.dep_input for v in ins)
        leaves = frozenset().union(*(params_leaves(v) for v in ins))
        if dep_input and leaves:
            raise AnatomyError(
                f"The tracer cannot follow {self.where(op)}: it combines the parameter(s) "
                f"{self.describe_leaves(leaves)} with values computed from the input, and its "
                "effect on units is not known, so these parameters could belong to no neuron "
                "group. Declare the module's groups (`__neuron_groups__`, see "
                "`neurosurgery.DeclaredGroup`) or call the model through `fn=` so that this "
                "operation is not traced."
            )
        dep_param = bool(leaves) and not dep_input
        for out in op.outputs:
            self.set(out, Value(dep_input=dep_input, dep_param=dep_param, pstats=leaves))

    # ---- elementwise -------------------------------------------------------------------------
    def raw_groups(self, labels: np.ndarray) -> set[int]:
        return {self.unit_group[u] for lab in labels for u in self.members(int(lab))}

    def meeting_kind(self, op: Op, ins: list[Value], i: int, j: int) -> str:
        name = op.name
        if name == "select_n":
            return "mul" if i == 0 else "either"
        if name not in ADDITIVE:
            return "mul"
        a, b = ins[i], ins[j]
        layer = a.stage >= 0 and b.stage >= 0 and a.exclusive and b.exclusive
        layer = layer and len(a.units) == len(b.units) == 1
        if layer or len(self.raw_groups(self.labels_of(a.units + b.units))) == 1:
            return "layer"
        return "add"

    def elementwise(self, op: Op, ins: list[Value]) -> None:
        out = op.outputs[0]
        nd = len(self.graph.shapes[out])
        facs = [[lift(f, nd) for f in v.units] for v in ins]
        labelled = [i for i, f in enumerate(facs) if f]
        for n, i in enumerate(labelled):
            for j in labelled[n + 1 :]:
                kind = self.meeting_kind(op, ins, i, j)
                for fa in facs[i]:
                    for fb in facs[j]:
                        self.meet(kind, fa, fb, op, facs[i], facs[j])
        units = self.normal([f for fs in facs for f in fs], nd)
        # random draws combined with parameters (NoisyNet's mu + sigma * eps) stay the
        # parameters' values: a weight that reads no data
        dep_input = any(v.dep_input and not v.noise for v in ins)
        dep_param = any(v.dep_param for v in ins) and not dep_input
        params: list[PFactor] = []
        pstats = frozenset().union(*(v.pstats for v in ins))
        if not dep_input:
            # a comparison's output (and a select's predicate) carries no gradient: parameters
            # read there choose values but are no entries of them, so they are folded in as a
            # statistic (and left in no group, where nothing else reads them)
            first = 1 if op.name == "select_n" else len(ins) if op.name in COMPARISONS else 0
            params = [p.lifted(nd) for v in ins[first:] for p in v.params]
            pstats |= frozenset(p.leaf for v in ins[:first] for p in v.params if p.leaf >= 0)
            if len(params) > 4:
                pstats |= frozenset(p.leaf for p in params if p.leaf >= 0)
                params = []
        staged = [v for v in ins if v.units and v.stage >= 0]
        others_plain = all(not v.dep_input for v in ins if not (v.units and v.stage >= 0))
        kind = "act"
        if units:
            if any(v.dep_param and not v.dep_input for v in ins) or any(
                v.dep_input and not v.units for v in ins
            ):
                kind = "pre"
            fed = op.name in ADDITIVE and bool(staged) and others_plain
            role, pkind = ("incoming", "bias") if fed else ("per_unit", "shift")
            if op.name in ("mul", "div"):
                role, pkind = "per_unit", "scale"
            targets = units
            if fed:  # a bias belongs to the layer it is added to, not to units passing through
                stage = staged[0].stage
                targets = [f for f in units if stage in self.raw_groups(self.labels_of([f]))]
            for v in ins:
                if v.dep_param and not v.dep_input:
                    for pf in v.params:
                        lifted = pf.lifted(nd)
                        for f in targets:
                            self.relate(role, pkind, f, lifted, op)
        if op.name in PASS:
            kind = "pass"
        value = Value(units, params, dep_input, dep_param, None, pstats, kind=kind)
        bias = op.name in ADDITIVE and len(staged) == 1 and others_plain
        layer = op.name in ADDITIVE and len(staged) == 2 and all(v.exclusive for v in staged)
        if (op.name in PASS and staged) or bias or layer:
            value.stage = staged[0].stage
            value.exclusive = all(v.exclusive for v in staged) and self.exclusive(out)
            if bias or op.name in PASS:
                value.kind = "producer" if staged[0].kind == "producer" else value.kind
        self.set(out, value)

    # ---- reductions --------------------------------------------------------------------------
    def reduction(self, op: Op, ins: list[Value]) -> None:
        """Labels survive a reduction where they are constant along the reduced axes; units
        reduced over are a statistic (a norm's mean, a sum over units)."""
        v = ins[0]
        axes = tuple(op.params.get("axes", ()))
        nd = len(self.shape(op.inputs[0]))
        keep = [d for d in range(nd) if d not in axes]
        units = []
        for f in v.units:
            f = lift(f, nd)
            if all(f.shape[d] == 1 for d in axes):
                units.append(f.reshape([f.shape[d] for d in keep]))
            else:
                self.reduced.append((self.labels_of([f]), op))
        params: list[PFactor] = []
        pstats = v.pstats
        if not v.dep_input:
            where = {d: i for i, d in enumerate(keep)}
            for pf in v.params:
                pf = pf.lifted(nd)
                if all(m.shape[d] == 1 for m in pf.maps for d in axes):
                    kept = tuple(m.reshape([m.shape[d] for d in keep]) for m in pf.maps)
                    params.append(pf.moved(kept, where))
                else:
                    pstats = pstats | {pf.leaf}
        value = Value(units, params, v.dep_input, v.dep_param and not v.dep_input, None, pstats)
        value.kind = "act"
        self.set(op.outputs[0], value)

    # ---- declared modules --------------------------------------------------------------------
    def declared_call(self, op: Op, ins: list[Value]) -> None:
        """A module with declared groups: units may not flow in, nothing flows out."""
        for v in ins:
            if v.units:
                raise AnatomyError(
                    f"The {self.describe_units(self.labels_of(v.units))} flow into a module that "
                    "declares its own neuron groups, so their outgoing weights are unknown. "
                    "Declare the groups on the enclosing module instead, so that producer and "
                    "consumers are declared together."
                )
        dep_input = any(v.dep_input for v in ins)
        for out in op.outputs:
            self.set(out, Value(dep_input=dep_input, dep_param=not dep_input))


__all__ = ["NONE", "Tracer"]
