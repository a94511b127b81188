"""The anatomy table of the docs: for each architecture family, mapped or refused (with the
message), its groups and units, and the measured function-preservation error.

Run: `.venv/bin/python benchmarks/anatomy_table.py > table.md`. For every group that is neither
an output, shared (residual stream), normalised nor `term_kept`, ~30 % of its units are reset with their
incoming weights re-drawn (from a second model of the family) and outgoing weights zeroed, and
the outputs are compared with the same reset re-drawing from the model itself (outgoing weights
zeroed only). The table shows the largest output difference over those groups, relative to the
largest output; "–" where a family has no such group. The last column is the wall time of
`ns.anatomy` on the family's model (tracing, and the runs of the traced program that check
paired groups), in the process's first call, so it includes compilation.
"""

from __future__ import annotations

import pathlib
import re
import sys
import textwrap
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # this checkout first, then the zoo

from _zoo import FAMILIES  # noqa: E402

import neurosurgery as ns  # noqa: E402


def batch_of(example: tuple, n: int = 4) -> tuple:
    """`n` random samples shaped like `example` (keys split, integers and states repeated)."""
    key = jax.random.key(11)
    out = []
    for i, x in enumerate(example):
        k = jax.random.fold_in(key, i)
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            out.append(jax.random.split(k, n))
        elif isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating):
            out.append(jax.random.normal(k, (n, *x.shape), x.dtype))
        else:
            out.append(jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n, *a.shape)), x))
    return tuple(out)


def preservation(anatomy, make, fn, example) -> tuple[float | None, int]:
    model = make(jax.random.key(0))[0]
    other = make(jax.random.key(1))[0]
    call = fn or (lambda m, *a: m(*a))
    xs = batch_of(example)

    @eqx.filter_jit
    def outputs(m):
        return jax.vmap(lambda *a: call(m, *a))(*xs)

    base = outputs(model)
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(base))
    worst, checked = None, 0
    rng = np.random.default_rng(0)
    for g in anatomy.groups:
        if g.output or g.shared or g.normalized or g.term_kept:
            continue
        mask = rng.random(g.unit_shape) < 0.3
        mask.flat[0] = True
        masks = {g.name: jnp.asarray(mask)}
        key = jax.random.key(3)
        new = ns.reset(anatomy, model, masks, key, init=lambda k: other, include_shared=True)
        same = ns.reset(anatomy, model, masks, key, init=lambda k: model, include_shared=True)
        diff = jax.tree_util.tree_map(
            lambda a, b: float(jnp.max(jnp.abs(a - b))), outputs(new.model), outputs(same.model)
        )
        delta = max(jax.tree_util.tree_leaves(diff)) / scale
        worst = delta if worst is None else max(worst, delta)
        checked += 1
    return worst, checked


def row(name: str, make) -> str:
    model, example, fn = make(jax.random.key(0))
    start = time.perf_counter()
    try:
        anatomy = ns.anatomy(model, *example, fn=fn)
    except ns.AnatomyError as err:
        seconds = time.perf_counter() - start
        text = re.sub(r"\S*site-packages/", "", str(err)).replace(f"{HERE.parent}/", "")
        message = textwrap.shorten(text, 260, placeholder=" …").replace("|", "\\|")
        return f"| {name} | refused: {message} | – | – | – | {seconds:.2f} |"
    seconds = time.perf_counter() - start
    worst, checked = preservation(anatomy, make, fn, example)
    kinds = {}
    for g in anatomy.groups:
        kinds[g.kind()] = kinds.get(g.kind(), 0) + 1
    extra = []
    if anatomy.unobserved:
        extra.append(f"not observed: {', '.join(f'`{n}`' for n in anatomy.unobserved)}")
    normalised = [g.name for g in anatomy.groups if g.normalized and not g.output]
    if normalised:
        extra.append(f"normalised: {len(normalised)}")
    kept = [g.name for g in anatomy.hidden if g.term_kept]
    if kept:
        extra.append(f"term kept: {len(kept)}")
    held = [g.name for g in anatomy.hidden if g.no_reset]
    if held:
        extra.append(f"not reset by default: {len(held)}")
    groups = ", ".join(f"{n} {k}" for k, n in kinds.items())
    units = (
        f"{sum(g.n_units for g in anatomy.hidden)} ({sum(g.n_units for g in anatomy.resettable)})"
    )
    delta = "–" if worst is None else f"{worst:.1e} ({checked} group{'s' * (checked > 1)})"
    note = f" ({'; '.join(extra)})" if extra else ""
    return (
        f"| {name} | mapped{note} | {len(anatomy.groups)}: {groups} | {units} | {delta} "
        f"| {seconds:.2f} |"
    )


def main() -> None:
    print(
        "| family | anatomy | groups | hidden units (resettable) | max Δ output / output "
        "| anatomy time (s) |"
    )
    print("|---|---|---|---|---|---|")
    for name, make in FAMILIES.items():
        print(row(name, make), flush=True)


if __name__ == "__main__":
    main()
