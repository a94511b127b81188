"""BRO training throughput side by side: this project's BRO against the released BRO.

The released BRO is the authors' JAX + Flax code (Nauman et al. 2024, "Bigger, Regularized,
Optimistic", github naumix/BiggerRegularizedOptimistic, `jaxrl/bro`), run from its own entry
point `train_parallel.py`, which trains `--num_seeds` seeds in one process (vmapped networks,
one dm_control environment per seed stepped in that process). It lives in its own checkout,
outside this repository, with its own virtual environment (its requirements: JAX 0.4.19,
Flax 0.7.5, dm_control 1.0.14, …); this script starts it as a subprocess of that interpreter.
Nothing of it is copied here.

Both sides train BRO on the same dm_control task (`--task`, default cheetah-run), `--seeds`
seeds in one process, with the same settings ("BRO fast"):

* twin quantile critics, BroNet of width `--width` with 2 residual blocks, `--quantiles`
  quantiles; both actors (the conservative π_c and the optimistic π_o) BroNets of width
  `--width` with 1 block;
* batch `--batch`, `--replay-ratio` gradient updates per env step (each updates the critics,
  π_c, α, π_o and the optimism/KL adjusters on its own batch), one environment per seed, action
  repeat 1, episodes of 1,000 steps;
* `--learning-starts` env steps of uniform random actions, replay capacity `--buffer-size`
  transitions per seed, the released schedule of full resets (env step 15,001 alone at replay
  ratio 2, the list up to 2,000,001 at any other), no evaluation at all (the released script's
  `--eval_interval` is set past the last step, which also turns off its metric logging; ours
  `eval_every=0`), no logging sinks (the released script runs with `WANDB_MODE=disabled`, so
  its `wandb.init` and `wandb.log` do nothing and nothing goes to the network).

How it is timed (compile and warm-up excluded on both sides), by steady-state windows between
two progress points:

* Ours, in this process: `agents.Trainer` on the same settings; its random warm-up segment and
  first learning segment (which compiles) run first, then each round times one learning
  segment of `--steps` env steps per seed (`log_every`), blocking until it is done.
* Released: one process for the whole benchmark, started after ours is compiled, with
  `max_steps` = learning starts + `--released-warmup` + rounds × `--steps`. A wrapper around
  `BRO.update` (measurement only) reads the clock when the loop reaches the update of a marked
  env step: learning starts and the step after it (the first update compiles: printed as its
  compile time), then a = learning starts + warm-up and every `--steps` steps after. At each
  of these but the last the process waits on its stdin (while ours runs), then starts its
  clock again; a window is the time from that restart to the next mark: `--steps` env steps
  per seed (each: an action from π_o, one env step of every seed, the replay insert, the
  sampling of the batches, `replay ratio` updates), timed by the released process itself.
  Every action is read back to NumPy before the env step, so at each mark the previous
  update has finished: no work is in flight across a mark.
* Rounds alternate the two, the order swapped every round (ours first in the first round);
  the paused side does nothing while the other runs. Each round prints both sides' env steps/s
  (all seeds together and per seed) and the ratio ours/released; then the median ratio over
  the rounds. Both runs go on through the rounds: round r (from 0) times the env steps from
  a + r·N (released) and from learning starts + (r + 1)·N (ours), N = `--steps`.

Run-time patches of the released code (its files are never changed): its network widths are
fixed in code (critic 512, both actors 256; no flag), so the launcher binds `hidden_dims` =
`--width` into `critic_net.DoubleCritic`, `policies.NormalTanhPolicy` and
`policies.DualTanhPolicy` with `functools.partial` before `main` runs (depths, 2 critic blocks
and 1 actor block, are its defaults); and the timing wrapper above. Parameter counts per seed
of each network are printed for both sides as a check that the networks agree.

    MUJOCO_GL=disable .venv/bin/python benchmarks/bench_bro_vs_released.py \\
        --released ../BiggerRegularizedOptimistic \
        --released-python ../BiggerRegularizedOptimistic/.venv/bin/python \\
        --task cheetah-run --seeds 5 --width 64 --quantiles 100 --batch 128 \\
        --replay-ratio 2 --steps 2000 --rounds 3

Beyond the timed steps, each side pays its start-up, random warm-up and compile once: on two
busy cores the released first update alone compiled for several minutes at width 64.

Setting up the released side (measured with its commit 5870a13d4bf4f66eeddfc291a59df6d2009de600,
on Python 3.11, CPU only; the pins follow its `requirements_dmc.txt`, with the CPU jaxlib and
without mujoco-py, brax and imageio, which its dm_control path never imports):

    git clone https://github.com/naumix/BiggerRegularizedOptimistic ../BiggerRegularizedOptimistic
    cd ../BiggerRegularizedOptimistic && python3.11 -m venv .venv
    .venv/bin/pip install setuptools==65 wheel==0.38.4 && .venv/bin/pip install gym==0.20.0
    .venv/bin/pip install jax==0.4.19 jaxlib==0.4.19 flax==0.7.5 optax==0.1.7 chex==0.1.84 \
        orbax-checkpoint==0.4.1 ml_dtypes==0.3.1 numpy==1.26.4 scipy==1.12.0 mujoco==2.3.7 \
        dm_control==1.0.14 tfp-nightly==0.20.0.dev20230524 wandb ml_collections tqdm absl-py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
from _timing import SegmentTimer

from agents import BROConfig, SurgeryConfig, TrainConfig, Trainer

#: runs in the released checkout's own interpreter: argv[1] is a JSON spec (checkout, width,
#: seeds, marks, pauses, flags for train_parallel.py). At each marked env step it prints a
#: "RELEASED <json>" line on stdout; at a pause it then waits for "go" on stdin.
LAUNCHER = r"""
import functools, json, sys, time
spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["checkout"])
sys.argv = ["train_parallel.py", *spec["flags"]]
import jax
from absl import app
import train_parallel
from jaxrl.networks import critic_net, policies

# patch 1: the widths are fixed in the released code (critic 512, actors 256)
width = spec["width"]
critic_net.DoubleCritic = functools.partial(critic_net.DoubleCritic, hidden_dims=width)
policies.NormalTanhPolicy = functools.partial(policies.NormalTanhPolicy, hidden_dims=width)
policies.DualTanhPolicy = functools.partial(policies.DualTanhPolicy, hidden_dims=width)

# patch 2 (measurement only): the clock at the update of each marked env step, and a pause
# there (while the other side runs) for the pauses; a window runs from a resume to the next mark
marks, pauses, update = set(spec["marks"]), set(spec["pauses"]), train_parallel.BRO.update
resumed = [None]

def size(params):
    return sum(x.size for x in jax.tree_util.tree_leaves(params)) // spec["seeds"]

def timed_update(self, batches, num_updates, env_step):
    if env_step in marks:
        now = time.perf_counter()
        out = {"step": env_step, "t": now}
        if resumed[0] is not None:
            out["window_s"] = now - resumed[0]
        if env_step == min(marks):
            out["params"] = {"critic": size(self.critic.params), "actor": size(self.actor.params),
                             "optimistic_actor": size(self.actor_o.params)}
            out["jax"] = jax.__version__
        print("RELEASED " + json.dumps(out), flush=True)
        if env_step in pauses:
            if sys.stdin.readline().strip() != "go":
                sys.exit("released BRO: stopped at a pause")
            resumed[0] = time.perf_counter()
    return update(self, batches, num_updates, env_step)

train_parallel.BRO.update = timed_update
app.run(train_parallel.main)
"""


class Released:
    """The released `train_parallel.py` in a subprocess of its own interpreter, paused at the
    start of every timed window (`--released-warmup` learning steps after learning starts,
    then every `steps` env steps) until `run_window` lets it run the next one."""

    def __init__(self, args: argparse.Namespace, steps: int):
        self.start = args.learning_starts
        first = self.start + args.released_warmup
        self.pauses = [first + k * steps for k in range(args.rounds)]
        self.last = first + args.rounds * steps
        self.flags = [
            "--benchmark=dmc",
            f"--env_name={args.task}",
            "--seed=0",
            f"--num_seeds={args.seeds}",
            f"--batch_size={args.batch}",
            f"--updates_per_step={args.replay_ratio}",
            f"--start_training={self.start}",
            f"--replay_buffer_size={args.buffer_size}",
            f"--max_steps={self.last}",
            # never: it evaluates (and logs to wandb) when step % eval_interval == 0
            f"--eval_interval={self.last + 1}",
            "--notqdm",
            "--distributional",
            f"--config={Path(args.released, 'configs', 'bro_default.py')}",
            f"--config.n_quantiles={args.quantiles}",
        ]
        spec = {
            "checkout": str(Path(args.released).resolve()),
            "width": args.width,
            "seeds": args.seeds,
            "marks": [self.start, self.start + 1, *self.pauses, self.last],
            "pauses": self.pauses,
            "flags": self.flags,
        }
        self.command = [args.released_python, "-c", "<launcher>", "<spec>", *self.flags]
        # its results/ and wandb/ folders go to a scratch folder, not into the checkout
        self.scratch = tempfile.TemporaryDirectory(prefix="bro-released-")
        self.stderr = open(Path(self.scratch.name, "stderr.txt"), "w+")  # noqa: SIM115
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [args.released_python, "-c", LAUNCHER, json.dumps(spec)],
            cwd=self.scratch.name,
            env=dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.marks = [self._mark() for _ in range(3)]  # learning starts, +1, first pause
        self.ready_s = time.perf_counter() - self.t0
        self.first_update_s = self.marks[1]["t"] - self.marks[0]["t"]
        self.params, self.jax = self.marks[0]["params"], self.marks[0]["jax"]

    def _mark(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("RELEASED "):
                return json.loads(line.removeprefix("RELEASED "))
        self.proc.wait()
        self.stderr.seek(0)
        sys.stderr.write(self.stderr.read()[-8000:])
        raise SystemExit(f"the released run failed (exit {self.proc.returncode})")

    def run_window(self) -> float:
        """Let it run from its pause to the next mark; the window's seconds, by its own clock."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.marks.append(self._mark())
        return self.marks[-1]["window_s"]

    def close(self) -> None:
        if self.proc.poll() is None and self.marks[-1]["step"] != self.last:
            self.proc.kill()
        self.proc.wait()
        self.stderr.close()
        self.scratch.cleanup()


def full_resets(replay_ratio: int) -> tuple[int, ...]:
    """The released schedule of full resets (`BRO.reset_list`, env steps counted from 1, a
    reset before the update of that step): its first entry alone at 2 updates per env step,
    all of them otherwise. Ours gets the same list."""
    steps = (15_000, 50_000, 250_000, 500_000, 750_000, 1_000_000, 1_500_000, 2_000_000)
    return steps[:1] if replay_ratio == 2 else steps


def ours_timer(args: argparse.Namespace) -> SegmentTimer:
    """Our trainer, warmed up and compiled, stepped one `--steps` segment at a time."""
    config = TrainConfig(
        agent="bro",
        env=f"dmc/{args.task}",
        seeds=tuple(range(args.seeds)),
        steps=10**9,
        replay_ratio=float(args.replay_ratio),
        learning_starts=args.learning_starts,
        buffer_size=args.buffer_size,
        log_every=args.steps,
        eval_every=0,
        sinks=(),
        progress=False,
        surgery=SurgeryConfig(networks=(), metrics=()),
        bro=BROConfig(
            critic_width=args.width,
            critic_blocks=2,
            actor_width=args.width,
            actor_blocks=1,
            batch_size=args.batch,
            n_quantiles=args.quantiles,
            full_resets=full_resets(args.replay_ratio),
        ),
    )
    return SegmentTimer(Trainer(config))


def ours_params(timer: SegmentTimer, seeds: int) -> dict[str, int]:
    """Parameters per seed of our critic pair and actors (the seed axis divided out)."""
    nets = timer.trainer.agent.networks(timer.ts.agent)
    return {
        name: sum(x.size for x in jax.tree.leaves(eqx.filter(nets[name], eqx.is_array))) // seeds
        for name in ("critic", "actor", "optimistic_actor")
    }


def settings(args: argparse.Namespace) -> str:
    w, rows = args.width, []
    resets = ", ".join(f"{s:,}" for s in full_resets(args.replay_ratio))
    same = [
        ("task", f"dm_control {args.task}, action repeat 1, 1,000-step episodes"),
        ("seeds in one process", f"{args.seeds}, one env each, stepped in the training process"),
        ("critics", f"twin BroNet, width {w}, 2 blocks, {args.quantiles} quantiles"),
        ("actors (π_c and π_o)", f"BroNet, width {w}, 1 block"),
        ("batch / updates per env step", f"{args.batch} / {args.replay_ratio}"),
        ("learning starts (random steps)", f"{args.learning_starts}"),
        ("replay capacity per seed", f"{args.buffer_size:,}"),
        ("full resets (env steps)", resets),
        ("evaluation", "none (released: --eval_interval past the last step; ours eval_every=0)"),
        ("logging", "none (released: WANDB_MODE=disabled; ours sinks=())"),
    ]
    rows.append("settings, the same on both sides:")
    rows += [f"  {k:32s} {v}" for k, v in same]
    rows.append("cannot be matched:")
    rows += [
        "  released widths are fixed in its code (512/256): bound to --width at run time",
        "  JAX: released on its pinned stack (version below), ours on " + jax.__version__,
        "  replay: released samples NumPy batches on the host and copies them each env step;"
        " ours samples on the device",
        "  first update: released after learning_starts − 1 random steps and one policy step;"
        " ours after learning_starts random steps",
        "  π_o's output layer: released draws it orthogonal (gain 0.01) without a bias; ours"
        " starts it at zero with a bias (action-size parameters more)",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--released", required=True, help="checkout of the released BRO")
    parser.add_argument("--released-python", help="its interpreter (default: <released>/.venv)")
    parser.add_argument("--task", default="cheetah-run", help="dm_control domain-task")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--width", type=int, default=64, help="critic and actor width")
    parser.add_argument("--quantiles", type=int, default=100)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--replay-ratio", type=int, default=2, help="updates per env step")
    parser.add_argument("--steps", type=int, default=2000, help="timed env steps per seed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--learning-starts", type=int, default=2500)
    parser.add_argument("--buffer-size", type=int, default=1_000_000)
    parser.add_argument(
        "--released-warmup", type=int, default=200, help="released learning steps before timing"
    )
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()
    if args.released_python is None:
        args.released_python = str(Path(args.released, ".venv", "bin", "python"))
    if args.learning_starts < 2 or args.released_warmup < 2 or args.steps < 1:
        parser.error("--learning-starts and --released-warmup ≥ 2, --steps ≥ 1")
    if args.replay_ratio < 1:
        parser.error("--replay-ratio must be a whole number ≥ 1 (the released flag is an int)")

    print("device:", jax.devices()[0], flush=True)
    t0 = time.perf_counter()
    ours = ours_timer(args)
    ours_first_s = time.perf_counter() - t0
    steps = ours.env_steps_per_segment  # per seed; == --steps (one env step per body at RR 2)
    print(settings(args), flush=True)
    released = Released(args, steps)
    try:
        print("released:", " ".join(released.command), flush=True)
        print(
            f"released ready after {released.ready_s:.0f} s (start-up, random steps, compile of "
            f"its first update: {released.first_update_s:.1f} s, {args.released_warmup} "
            f"learning steps); ours after {ours_first_s:.0f} s (random warm-up and first "
            "learning segment, compiled on first use)",
            flush=True,
        )
        print(f"timed env steps per seed per round: {steps}", flush=True)
        rows = [run_round(r, args.seeds, steps, ours, released) for r in range(args.rounds)]
    finally:
        released.close()

    print()
    print(f"released JAX {released.jax}; ours JAX {jax.__version__}")
    print(f"parameters per seed, released: {released.params}")
    print(f"parameters per seed, ours:     {ours_params(ours, args.seeds)}")
    ratio = statistics.median(row["ratio"] for row in rows)
    print(
        f"median over {args.rounds} round(s): ours "
        f"{statistics.median(row['ours'] for row in rows):,.0f} env steps/s, released "
        f"{statistics.median(row['released'] for row in rows):,.0f} (all {args.seeds} seeds); "
        f"ratio ours/released {ratio:.2f}×"
    )
    if args.json:
        print(json.dumps({"steps_per_seed": steps, "rounds": rows, "ratio": ratio}))


def run_round(r: int, seeds: int, steps: int, ours: SegmentTimer, released: Released) -> dict:
    """One round, ours first in even rounds (counted from 0), the released run first in odd."""
    row: dict[str, Any] = {}
    for side in ("ours", "released") if r % 2 == 0 else ("released", "ours"):
        row[f"{side}_s"] = ours.step() if side == "ours" else released.run_window()
    for side in ("ours", "released"):
        row[side] = steps * seeds / row[f"{side}_s"]
    row["ratio"] = row["ours"] / row["released"]
    print(
        f"round {r + 1}: ours {row['ours']:,.1f} env steps/s ({row['ours'] / seeds:,.1f} per "
        f"seed), released {row['released']:,.1f} ({row['released'] / seeds:,.1f} per seed); "
        f"ours/released {row['ratio']:.2f}×",
        flush=True,
    )
    return row


if __name__ == "__main__":
    main()
