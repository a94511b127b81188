"""What scoring units costs inside a jitted critic update of a BRO-size critic, on CPU.

Run: `.venv/bin/python benchmarks/bench_metric_cost.py [--repeats N] [--quantiles Q]`.

The critic is BRO's (BroNet, width 512, 2 residual blocks, input 67 + 21, Q quantiles, default
100), trained with Adam on a batch of 256 with the quantile Huber loss. Variants, each one jitted
function, timed interleaved in random order and reported as medians:

* `plain`: the update with `eqx.filter_value_and_grad`.
* `weight`: the update through `ns.observe` (no probes), plus GraMa(weight) from its gradients.
* `|grad| read`: the plain update plus the sum of |∂L/∂θ| over every parameter written as
  `jnp.sum` (an XLA reduction), for scale: one more pass over the gradients. GraMa(weight) reads
  the same entries but forms its per-unit sums as matrix-vector products, which XLA's CPU
  backend runs 3-4× faster than row reductions.
* `probes`: the update through `ns.observe` with pre-activation and activation probes, no scores.
* `preact+act`: the same plus GraMa(preactivation) and GraMa(activation).
* `+forward`: the plain update and one extra forward pass of the batch.
* `+dormant`: the plain update and τ-dormant from one extra (probed) forward pass.
* `dormant in update`: the update through `ns.observe` (no probes) plus τ-dormant from its
  activations.

Targets (the issue's): `weight` ≤ 2 % over `plain`, `preact+act` ≤ 10 %, τ-dormant's extra cost
≤ one extra forward pass.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import neurosurgery as ns
from agents.networks import BroCritic

OBS, ACT, BATCH = 67, 21, 256


def quantile_huber(pred: jax.Array, target: jax.Array) -> jax.Array:
    """BRO's critic loss (κ = 1): pred `(batch, Q)` quantiles, target `(batch, Q)` samples."""
    q = pred.shape[-1]
    taus = (jnp.arange(q, dtype=jnp.float32) + 0.5) / q
    diff = target[:, None, :] - pred[:, :, None]  # (batch, pred quantile, target sample)
    huber = jnp.where(jnp.abs(diff) <= 1.0, 0.5 * diff**2, jnp.abs(diff) - 0.5)
    weight = jnp.abs(taus[None, :, None] - (diff < 0).astype(jnp.float32))
    return jnp.mean(jnp.sum(jnp.mean(weight * huber, axis=-1), axis=-1))


def variants(anat: ns.Anatomy, static, opt):
    """The jitted update variants: `(params, opt_state, obs, act, target) -> outputs`."""

    def step(params, opt_state, grads):
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def batch_loss(params, obs, act, target):
        return quantile_huber(jax.vmap(eqx.combine(params, static))(obs, act), target)

    def plain(params, opt_state, obs, act, target):
        loss, grads = jax.value_and_grad(batch_loss)(params, obs, act, target)
        return *step(params, opt_state, grads), loss

    def observed(metrics, sites):
        def update(params, opt_state, obs, act, target):
            model = eqx.combine(params, static)
            loss, ob = ns.observe(
                anat, model, lambda q: quantile_huber(q, target), obs, act, sites=sites
            )
            scores = [m.score(anat, ob, m.init(anat))[0] for m in metrics]
            return *step(params, opt_state, ob.weight_grads), loss, scores

        return update

    def plus_forward(params, opt_state, obs, act, target):
        out = plain(params, opt_state, obs, act, target)
        q = jax.vmap(eqx.combine(params, static))(obs, act)
        return *out, jnp.mean(q)

    def plus_abs_read(params, opt_state, obs, act, target):
        loss, grads = jax.value_and_grad(batch_loss)(params, obs, act, target)
        total = sum(jnp.sum(jnp.abs(g)) for g in jax.tree_util.tree_leaves(grads))
        return *step(params, opt_state, grads), loss, total

    def plus_dormant(params, opt_state, obs, act, target):
        out = plain(params, opt_state, obs, act, target)
        model = eqx.combine(params, static)
        # the probed forward pass alone (the anatomy's own evaluation), laid out as observe does
        _, acts = jax.vmap(lambda o, a: anat._tapped(model, None, o, a))(obs, act)
        acts = {k: anat._layout(k, v, "activation") for k, v in acts.items()}
        ob = ns.Observation(
            activations=acts,
            preactivation_grads=None,
            activation_grads=None,
            weight_grads=None,
            params=params,
        )
        return *out, ns.Dormant().score(anat, ob, ns.EmptyState())[0]

    fns = {
        "plain": plain,
        "weight": observed([ns.GraMa("weight")], ()),
        "|grad| read": plus_abs_read,
        "probes": observed([], ns.SITES),
        "preact+act": observed([ns.GraMa("preactivation"), ns.GraMa("activation")], ns.SITES),
        "+forward": plus_forward,
        "+dormant": plus_dormant,
        "dormant in update": observed([ns.Dormant()], ()),
    }
    return {name: jax.jit(f) for name, f in fns.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--quantiles", type=int, default=100)
    parser.add_argument("--calls", type=int, default=3, help="updates per timing sample")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="the clock the ratios and targets use",
    )
    args = parser.parse_args()
    key = jax.random.key(0)
    critic = BroCritic(OBS, ACT, width=512, blocks=2, n_quantiles=args.quantiles, key=key)
    anat = ns.anatomy(critic, jnp.zeros(OBS), jnp.zeros(ACT))
    params, static = eqx.partition(critic, eqx.is_array)
    opt = optax.adam(1e-3)
    with jax.numpy_dtype_promotion("standard"):
        opt_state = opt.init(params)
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    batch = (
        jax.random.normal(k1, (BATCH, OBS)),
        jax.random.normal(k2, (BATCH, ACT)),
        jax.random.normal(k3, (BATCH, args.quantiles)),
    )
    fns = variants(anat, static, opt)
    for f in fns.values():  # compile and warm up
        for _ in range(2):
            jax.block_until_ready(f(params, opt_state, *batch))
    # wall time and this process's CPU time (all threads), per update; CPU time is less affected
    # by other processes competing for the cores
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    samples = {c: {name: [] for name in fns} for c in clocks}
    order = list(fns)
    rng = random.Random(0)
    for _ in range(args.repeats):
        rng.shuffle(order)
        for name in order:
            start = {c: clock() for c, clock in clocks.items()}
            for _ in range(args.calls):
                jax.block_until_ready(fns[name](params, opt_state, *batch))
            for c, clock in clocks.items():
                samples[c][name].append((clock() - start[c]) / args.calls)
    times = samples[args.clock]
    med = {name: statistics.median(t) for name, t in times.items()}
    base = med["plain"]
    # load from other processes drifts: also the median of each round's ratio to its own plain
    paired = {
        name: statistics.median(a / b for a, b in zip(t, times["plain"], strict=True))
        for name, t in times.items()
    }
    other = "cpu" if args.clock == "wall" else "wall"
    other_med = {name: statistics.median(t) for name, t in samples[other].items()}
    print(
        f"BRO critic: width 512, 2 blocks, input {OBS}+{ACT}, {args.quantiles} quantiles, batch "
        f"{BATCH}, Adam; {args.repeats} interleaved repetitions; jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, {os.cpu_count()} CPUs visible, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(
        f"clock for ratios and targets: {args.clock} time per update ({args.calls} updates per "
        f"sample); {other} time shown beside it"
    )
    print(
        f"{'variant':<20}{'median ms':>10}{'IQR ms':>16}{'vs plain':>10}{'paired':>10}"
        f"{other + ' ms':>10}{'vs plain':>10}"
    )
    for name, t in times.items():
        q = statistics.quantiles(t, n=4)
        print(
            f"{name:<20}{1e3 * med[name]:>10.2f}{f'{1e3 * q[0]:.2f}-{1e3 * q[2]:.2f}':>16}"
            f"{100 * (med[name] / base - 1):>+9.1f}%{100 * (paired[name] - 1):>+9.1f}%"
            f"{1e3 * other_med[name]:>10.2f}"
            f"{100 * (other_med[name] / other_med['plain'] - 1):>+9.1f}%"
        )
    extra_fwd = med["+forward"] - base
    extra_dormant = med["+dormant"] - base
    checks = [
        ("GraMa(weight) in the update ≤ 2 %", med["weight"] / base - 1, 0.02),
        (
            "GraMa(preactivation)+GraMa(activation) in the update ≤ 10 %",
            med["preact+act"] / base - 1,
            0.10,
        ),
    ]
    for label, value, target in checks:
        print(f"{label}: {100 * value:+.1f} % -> {'met' if value <= target else 'MISSED'}")
    print(
        f"τ-dormant from an extra probed forward pass: {1e3 * extra_dormant:.2f} ms vs one plain "
        f"forward pass {1e3 * extra_fwd:.2f} ms (ratio {extra_dormant / extra_fwd:.2f}) -> "
        f"{'met' if extra_dormant <= extra_fwd * 1.05 else 'MISSED'} (5 % timing slack)"
    )
    print(
        f"τ-dormant inside the update (observe, no probes): "
        f"{100 * (med['dormant in update'] / base - 1):+.1f} % over plain"
    )
    print(
        "one more pass over the gradients as a jnp.sum reduction of |gradient|, for scale: "
        f"{100 * (med['|grad| read'] / base - 1):+.1f} % (GraMa(weight) reads the same entries "
        "through matrix-vector products)"
    )
    print(
        f"probes alone (pre + post, no scores): {100 * (med['probes'] / base - 1):+.1f} %; "
        f"scoring on top: {100 * (med['preact+act'] - med['probes']) / base:+.1f} %"
    )


if __name__ == "__main__":
    main()
