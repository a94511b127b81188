"""Time and memory of `ns.anatomy`: a torchvision-style ResNet-50 at 64×64 and 224×224, a
BRO-size critic and DACER's denoiser, on CPU.

Run: `.venv/bin/python benchmarks/bench_anatomy.py [--repeats N] [--baseline REV]`.

Each ResNet case runs in a fresh process, so that its peak resident memory is its own: the
table shows the wall time of the first `ns.anatomy(...)` call (JAX's tracing caches cold) and of
the later ones (median of `--repeats` - 1), the process's peak resident set size, and the part of it reached during the calls (above what the process held
before: JAX, the model). The anatomy's time should grow with the number of layers, not with the
activations' spatial size. `--baseline REV` measures the same ResNet cases with the package as it
was at git revision `REV` (extracted to a temporary directory), side by side, and both again on
the ResNet without its stem max-pool, for a version that cannot pool.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_resnet(size: int, repeats: int, pool: bool) -> dict:
    """In a child process: map a ResNet-50 at `size`×`size`, report time and memory."""
    import jax
    import jax.numpy as jnp

    import neurosurgery as ns

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _resnet import resnet50

    model, state = resnet50(jax.random.key(0), stem_pool=pool)
    x = jnp.zeros((3, size, size))

    def call() -> ns.Anatomy:
        try:
            return ns.anatomy(model, x, state, fn=lambda m, x, s: m(x, s)[0])
        except ns.AnatomyError:  # older versions: only a closed-over state maps
            return ns.anatomy(model, x, fn=lambda m, x: m(x, state)[0])

    before = peak_mb()
    start = time.perf_counter()
    anatomy = call()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats - 1):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {
        "first": first,
        "time": statistics.median(times) if times else first,
        "peak": peak_mb(),
        "during": peak_mb() - before,
        "groups": len(anatomy.groups),
        "units": sum(g.n_units for g in anatomy.hidden),
    }


def run_child(size: int, repeats: int, package: pathlib.Path, pool: bool) -> dict | str:
    """The child's figures, or the last line of its error."""
    env = dict(os.environ, PYTHONPATH=f"{package}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, __file__, "--child", str(size), "--repeats", str(repeats)]
    cmd += ["--pool", str(int(pool))]
    out = subprocess.run(cmd, env=env, cwd=package, capture_output=True, text=True)
    if out.returncode:
        return re.sub(r"\S*site-packages/", "…/", out.stderr.strip().splitlines()[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def small_models(repeats: int) -> None:
    import jax
    import jax.numpy as jnp

    import neurosurgery as ns
    from agents.networks import BroCritic, Denoiser

    obs, act = 67, 21  # humanoid-sized observation and action
    cases = {
        "BRO critic (512 wide, 2 blocks)": (
            BroCritic(obs, act, width=512, blocks=2, key=jax.random.key(0)),
            (jnp.zeros(obs), jnp.zeros(act)),
        ),
        "DACER denoiser (3×256 mish)": (
            Denoiser(obs, act, key=jax.random.key(1)),
            (jnp.zeros(obs), jnp.zeros(act), jnp.float32(0.5)),
        ),
    }
    print(f"\n{'model':34s} {'anatomy (median)':>17s} {'make_jaxpr':>11s}")
    for name, (model, example) in cases.items():
        ns.anatomy(model, *example)  # warm caches (imports, primitive dispatch)
        t_map, t_jaxpr = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            ns.anatomy(model, *example)
            t_map.append(time.perf_counter() - start)
            start = time.perf_counter()
            jax.make_jaxpr(lambda *a, m=model: m(*a))(*example)
            t_jaxpr.append(time.perf_counter() - start)
        med, ref = statistics.median(t_map), statistics.median(t_jaxpr)
        print(f"{name:34s} {med * 1e3:15.0f}ms {ref * 1e3:9.1f}ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", help="also measure the package at this git revision")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pool", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_resnet(args.child, args.repeats, bool(args.pool))))
        return
    import jax

    print(f"device: {jax.devices()[0].device_kind}, {os.cpu_count()} CPU cores")
    versions = {"this tree": ROOT}
    tmp = None
    if args.baseline:
        tmp = tempfile.TemporaryDirectory()
        archive = subprocess.run(
            ["git", "archive", args.baseline, "neurosurgery", "agents", "envs", "benchmarks"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", tmp.name], input=archive.stdout, check=True)
        (pathlib.Path(tmp.name) / "benchmarks" / "_resnet.py").write_text(
            (ROOT / "benchmarks" / "_resnet.py").read_text()
        )
        versions[f"at {args.baseline}"] = pathlib.Path(tmp.name)
    columns = ("input", "1st call", "later", "peak RSS", "during", "groups", "units")
    widths = (9, 9, 8, 10, 9, 7, 7)
    layouts = {"ResNet-50 (torchvision layout, BatchNorm in inference mode), one sample": True}
    if args.baseline:
        layouts["The same without the stem max-pool (a layout the baseline can map)"] = False
    for title, pool in layouts.items():
        print(f"\n{title}")
        print(
            f"{'package':14s} "
            + " ".join(f"{c:>{w}s}" for c, w in zip(columns, widths, strict=True))
        )
        for label, package in versions.items():
            repeats = args.repeats if package == ROOT else 1
            for size in (64, 224):
                r = run_child(size, repeats, package, pool)
                if isinstance(r, str):
                    print(f"{label:14s} {size:>4d}×{size:<4d} refused: {r[:110]}")
                    continue
                cells = (
                    f"{size:>4d}×{size:<4d}",
                    f"{r['first']:8.2f}s",
                    f"{r['time']:7.2f}s",
                    f"{r['peak']:8.0f}MB",
                    f"{r['during']:7.0f}MB",
                    f"{r['groups']:7d}",
                    f"{r['units']:7d}",
                )
                print(f"{label:14s} " + " ".join(cells))
    if tmp is not None:
        tmp.cleanup()
    small_models(args.repeats)


if __name__ == "__main__":
    main()
