"""BRO's quantile-Huber loss, value and gradient: the pairwise n × m form against the sorted
O((n + m) log m) form (`agents.algorithms._quantile`), side by side on the default device.

The shapes are those of one BRO critic update: `seeds` vmapped seeds × `batch` samples × 2
critics × `quantiles` predicted quantiles against `quantiles` target samples. The two forms are
timed in alternation, each as one compiled call; the figure is the median over repeats of
the pairwise time over the sorted time (> 1: the sorted form is faster).

    python benchmarks/bench_quantile_loss.py [--seeds 5] [--batch 128] [--quantiles 100]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from agents.algorithms._quantile import quantile_huber, quantile_huber_pairwise


def compiled(loss, pred: jax.Array, target: jax.Array):
    """Compiled (value, gradient) of the summed loss over seeds, samples and critics, the
    targets held fixed."""
    target = jax.lax.stop_gradient(target)

    def total(pred):
        per_sample = lambda q, t: jnp.sum(jax.vmap(lambda p: loss(p, t, 1.0))(q))
        return jnp.sum(jax.vmap(jax.vmap(per_sample))(pred, target))

    return jax.jit(jax.value_and_grad(total)).lower(pred).compile()


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--quantiles", type=int, default=100)
    p.add_argument("--calls", type=int, default=10, help="calls per timing")
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    k_pred, k_target = jax.random.split(jax.random.key(0))
    shape = (args.seeds, args.batch)
    pred = jax.random.normal(k_pred, (*shape, 2, args.quantiles))
    target = 3.0 * jax.random.normal(k_target, (*shape, args.quantiles))

    forms = {"pairwise": quantile_huber_pairwise, "sorted": quantile_huber}
    fns = {name: compiled(loss, pred, target) for name, loss in forms.items()}
    # same value and gradient (float32)
    (v_ref, g_ref), (v_new, g_new) = (fns[n](pred) for n in forms)
    rel_v = abs(float(v_new) - float(v_ref)) / abs(float(v_ref))
    rel_g = float(jnp.max(jnp.abs(g_new - g_ref)) / jnp.max(jnp.abs(g_ref)))

    times: dict[str, list[float]] = {n: [] for n in forms}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            out = jax.block_until_ready(fn(pred))
            t0 = time.perf_counter()
            for _ in range(args.calls):
                out = fn(pred)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - t0) / args.calls)
    ratios = [a / b for a, b in zip(times["pairwise"], times["sorted"], strict=True)]
    print(
        f"device {jax.devices()[0].device_kind}; {args.seeds} seeds × {args.batch} samples × "
        f"2 critics × {args.quantiles} quantiles vs {args.quantiles} targets, value and gradient"
    )
    for name in forms:
        print(f"{name:<10s} {1e3 * statistics.median(times[name]):8.2f} ms per call (median)")
    print(f"pairwise / sorted: {statistics.median(ratios):.2f}x (median of {args.repeats})")
    print(f"sorted vs pairwise: value {rel_v:.1e}, gradient {rel_g:.1e} (relative)")


if __name__ == "__main__":
    main()
