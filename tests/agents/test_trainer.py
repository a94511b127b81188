"""The trainer end to end on the tiny point-mass task: files, resume after SIGKILL, seeds, NaN."""

import csv
import dataclasses
import errno
import itertools
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import agents
import envs
from agents import NetworkConfig, TrainConfig
from agents.training import _checkpoint, _loop, _sinks, _trainer, cli

ROOT = Path(__file__).resolve().parents[2]


def rows(run_dir: Path, perf: bool = False) -> list[tuple[str, ...]]:
    """metrics.csv without timing-dependent rows (with them: `perf`)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [tuple(r) for r in csv.reader(f) if perf or not r[2].startswith("perf/")]


@pytest.fixture(scope="module")
def killed_run(base_config, tmp_path_factory):
    """A run in a subprocess, started early (it compiles alongside the in-process run)."""
    run_dir = tmp_path_factory.mktemp("killed")
    config = dataclasses.replace(base_config, run_dir=str(run_dir))
    spec = tmp_path_factory.mktemp("killed_config")  # a fresh run refuses a folder with files
    (spec / "config.json").write_text(json.dumps({"config": dataclasses.asdict(config)}))
    # a callback that sleeps keeps the run alive long enough to be killed mid-way on fast machines
    script = (
        "import dataclasses, sys, time, agents\n"
        "pause = lambda step, metrics: time.sleep(0.5)\n"
        "config = dataclasses.replace(agents.load_run_config(sys.argv[1]), run_dir=sys.argv[2])\n"
        "agents.train(config, callbacks=[pause])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(spec), str(run_dir)], cwd=ROOT)
    seen: list[int] = []

    def kill_mid_run() -> None:
        ckpt = run_dir / "checkpoint.ckpt"
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if ckpt.exists():
                seen.append(_checkpoint.read_header(ckpt)["env_steps"])
                if seen[-1] >= 200:
                    time.sleep(random.uniform(0.0, 1.0))
                    break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    killer = threading.Thread(target=kill_mid_run)
    killer.start()
    yield config, killer
    killer.join()


@pytest.fixture(scope="module")
def full_run(base_config, tmp_path_factory, killed_run):
    run_dir = tmp_path_factory.mktemp("full")
    config = dataclasses.replace(base_config, run_dir=str(run_dir))
    records = []
    summary = agents.train(config, callbacks=[lambda step, m: records.append((step, m))])
    return config, run_dir, summary, records


def test_run_folder_contents(full_run):
    config, run_dir, summary, _ = full_run
    for name in ("config.json", "metrics.csv", "metrics.jsonl", "checkpoint.ckpt", "summary.json"):
        assert (run_dir / name).exists(), name
    assert (run_dir / "returns.png").stat().st_size > 0
    assert sorted(p.name for p in (run_dir / "tb").iterdir()) == ["seed_0", "seed_1"]
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["versions"]["jax"] == jax.__version__ and "equinox" in saved["versions"]
    assert agents.load_run_config(run_dir) == config
    assert summary["env_steps"] == 1000 and summary["updates"] == 400
    assert len(summary["eval/episode_return"]["final"]) == 2
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {ln["seed"] for ln in lines} == {0, 1}


def test_callback_metric_names(full_run):
    _, _, _, records = full_run
    steps = [s for s, _ in records]
    assert steps == [200, 400, 600, 800, 1000]
    names = set().union(*(m.keys() for _, m in records))
    for name in (
        "train/critic_loss",
        "train/actor_loss",
        "train/alpha",
        "train/entropy",
        "train/q_mean",
        "train/episode_return",
        "eval/episode_return",
        "perf/env_steps_per_s",
        "perf/updates_per_s",
        "perf/compile_s",
        "perf/wall_s",
    ):
        assert name in names, name
    wall = [m["perf/wall_s"][0] for _, m in records]
    assert all(0 < a < b for a, b in itertools.pairwise(wall))
    assert all(np.shape(v) == (2,) for _, m in records for v in m.values())
    assert "train/critic_loss" not in records[0][1]  # warm-up: no updates yet


def test_resume_after_sigkill_matches_uninterrupted_run(full_run, killed_run):
    _, full_dir, summary, _ = full_run
    config, killer = killed_run
    killer.join()
    run_dir = Path(config.run_dir)
    header = _checkpoint.read_header(run_dir / "checkpoint.ckpt")
    assert 200 <= header["env_steps"] < 1000  # killed mid-run, after a checkpoint
    resumed = agents.train(config, resume=True)
    assert rows(run_dir) == rows(full_dir)
    for key in ("env_steps", "updates", "eval/episode_return", "train/episode_return"):
        assert resumed[key] == summary[key]
    # the wall time goes on from the last record kept, not from zero
    kept = [float(r[3]) for r in rows(run_dir, perf=True) if r[1:3] == ("0", "perf/wall_s")]
    assert all(a < b for a, b in itertools.pairwise(kept))
    assert resumed["wall_s"] == kept[-1]


def test_vmapped_seeds_equal_single_seed_runs(full_run, tmp_path):
    config, full_dir, _, _ = full_run
    by_seed = {}
    for seed in (0, 1):
        cfg = dataclasses.replace(config, seeds=(seed,), run_dir=str(tmp_path / f"s{seed}"))
        agents.train(cfg)
        by_seed[seed] = {r[0:1] + r[2:] for r in rows(tmp_path / f"s{seed}")[1:]}
    for seed in (0, 1):
        vmapped = {r[0:1] + r[2:] for r in rows(full_dir)[1:] if r[1] == str(seed)}
        single = by_seed[seed]
        assert {r[:2] for r in vmapped} == {r[:2] for r in single}
        v, s = (
            dict((r[:2], float(r[2])) for r in vmapped),
            dict((r[:2], float(r[2])) for r in single),
        )
        for k in v:
            np.testing.assert_allclose(v[k], s[k], rtol=1e-3, atol=1e-4, err_msg=str(k))


def test_seeds_in_sequence_equal_vmapped_seeds(full_run, tmp_path, monkeypatch):
    """The seeds computed one after the other (`lax.map`, as for MuJoCo Warp environments,
    which cannot be vmapped over seeds) give the vmapped run's records."""

    config, full_dir, _, _ = full_run
    monkeypatch.setattr(_trainer, "seeds_in_sequence", lambda config: True)
    cfg = dataclasses.replace(config, run_dir=str(tmp_path / "in_sequence"))
    agents.train(cfg)
    vmapped = {r[:3]: float(r[3]) for r in rows(full_dir)[1:]}
    in_sequence = {r[:3]: float(r[3]) for r in rows(tmp_path / "in_sequence")[1:]}
    assert vmapped.keys() == in_sequence.keys()
    assert {seed for _, seed, _ in vmapped} == {"0", "1"}
    for k, v in vmapped.items():
        np.testing.assert_allclose(in_sequence[k], v, rtol=1e-3, atol=1e-4, err_msg=str(k))


def _poisoned_copy(full_run, tmp_path, network: str) -> TrainConfig:
    config, full_dir, _, _ = full_run
    run_dir = tmp_path / f"nan_{network}"
    shutil.copytree(full_dir, run_dir)
    trainer = agents.Trainer(config)
    template = trainer.initial_state()
    ckpt = run_dir / "checkpoint.ckpt"
    state, header = agents.load_checkpoint(ckpt, template)
    where = {
        "critic": lambda t: t.agent.critic.members[0].net.head.weight,
        "actor": lambda t: t.agent.actor.net.head.weight,
    }[network]
    state = eqx.tree_at(where, state, replace_fn=lambda w: w.at[0, 0].set(jnp.nan))
    meta = {k: v for k, v in header.items() if k != "leaves"}
    agents.save_checkpoint(ckpt, state, meta)
    return dataclasses.replace(config, run_dir=str(run_dir), steps=config.steps + 400)


@pytest.mark.parametrize("network", ["critic", "actor"])
def test_non_finite_stops_run_and_keeps_checkpoint(full_run, tmp_path, network):
    config = _poisoned_copy(full_run, tmp_path, network)
    ckpt = Path(config.run_dir) / "checkpoint.ckpt"
    before = ckpt.read_bytes()
    with pytest.raises(agents.NonFiniteError, match=f"'{network}'") as err:
        agents.train(config, resume=True)
    assert "env step" in str(err.value) and "1000" in str(err.value)
    assert ckpt.read_bytes() == before


def test_a_full_disk_stops_the_run_in_one_line_and_a_resume_after_is_exact(
    full_run, tmp_path, monkeypatch
):
    """No room for the checkpoint at env step 600: the run stops with one error naming the file,
    the intact checkpoint (400) and the way on; no temporary file is left; once there is room
    again, the resumed run's records are those of an uninterrupted run."""
    config, full_dir, summary, _ = full_run
    run_dir = tmp_path / "disk"
    real = _checkpoint._Checksummed.write
    full = []

    def write(self, data):
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(_checkpoint._Checksummed, "write", write)
    fill = lambda step, metrics: full.append(1) if step == 600 else None
    c = dataclasses.replace(config, run_dir=str(run_dir))
    with pytest.raises(agents.RunWriteError) as caught:
        agents.train(c, callbacks=[fill])
    message = str(caught.value)
    assert "\n" not in message and str(run_dir / "checkpoint.ckpt") in message
    assert "No space left on device" in message
    assert "last checkpoint (env step 400) is intact" in message
    assert f"neurosurgery resume {run_dir}" in message
    assert not list(run_dir.glob("*.tmp*"))
    assert _checkpoint.read_header(run_dir / "checkpoint.ckpt")["env_steps"] == 400
    full.clear()
    resumed = agents.train(c, resume=True)
    assert rows(run_dir) == rows(full_dir)
    assert resumed["eval/episode_return"] == summary["eval/episode_return"]


def test_a_file_rewritten_on_a_full_disk_stays_whole(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("old\n")

    def write(f):
        f.write("new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space") as caught:
        _sinks.replace_file(path, write)
    assert caught.value.filename == str(path)
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_the_command_line_prints_a_write_error_in_one_line(monkeypatch, capsys):
    def no_room(*args, **kwargs):
        raise agents.RunWriteError("could not write runs/x/checkpoint.ckpt: No space left")

    monkeypatch.setattr(cli, "train", no_room)
    assert cli.main(["train", "sac", "--run-dir", "runs/x"]) == 4
    err = capsys.readouterr().err
    assert err == "neurosurgery: error: could not write runs/x/checkpoint.ckpt: No space left\n"


def test_checkpoint_roundtrip_is_complete(full_run, tmp_path):
    config, full_dir, _, _ = full_run
    template = agents.Trainer(config).initial_state()
    state, header = agents.load_checkpoint(full_dir / "checkpoint.ckpt", template)
    path = tmp_path / "copy.ckpt"
    agents.save_checkpoint(path, state, {"env_steps": header["env_steps"]})
    again, _ = agents.load_checkpoint(path, template)
    leaves = lambda t: jax.tree.leaves(_checkpoint._unwrap_keys(eqx.filter(t, eqx.is_array)))
    for a, b in zip(leaves(state), leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # optimizer states, targets, temperature, replay, keys and counters all travel
    assert int(state.agent.updates[0]) == 400 and int(state.replay.size[0]) == 1000
    assert not np.array_equal(
        state.agent.critic.members[0].net.head.weight,
        state.agent.target_critic.members[0].net.head.weight,
    )
    assert not os.path.exists(str(path) + ".tmp")


def test_incompatible_checkpoint_refused(full_run, tmp_path):
    config, full_dir, _, _ = full_run
    wider = dataclasses.replace(config.sac, critic=NetworkConfig(width=24, depth=1))
    template = agents.Trainer(dataclasses.replace(config, sac=wider)).state_shapes()
    with pytest.raises(agents.CheckpointError, match="does not match"):
        agents.load_checkpoint(full_dir / "checkpoint.ckpt", template)
    run_dir = tmp_path / "other"
    shutil.copytree(full_dir, run_dir)
    with pytest.raises(agents.CheckpointError, match="different configuration") as err:
        agents.train(dataclasses.replace(config, sac=wider, run_dir=str(run_dir)), resume=True)
    assert "sac.critic.width: 16 → 24" in str(err.value) and "new --run-dir" in str(err.value)
    with pytest.raises(agents.CheckpointError, match="already holds a run"):
        agents.train(dataclasses.replace(config, run_dir=str(run_dir)))


def test_checkpoint_from_before_an_option_existed_resumes_at_its_default(full_run, tmp_path):
    """An option added after a checkpoint was written is compatible when left at its default."""
    config, full_dir, summary, _ = full_run
    run_dir = tmp_path / "older"
    shutil.copytree(full_dir, run_dir)
    ckpt = run_dir / "checkpoint.ckpt"
    template = agents.Trainer(config).state_shapes()
    state, header = agents.load_checkpoint(ckpt, template)
    meta = {k: v for k, v in header.items() if k != "leaves"}
    del meta["config"]["reset"]["end"]  # as if written before reset.end existed
    agents.save_checkpoint(ckpt, state, meta)
    resumed = agents.train(dataclasses.replace(config, run_dir=str(run_dir)), resume=True)
    assert resumed["env_steps"] == summary["env_steps"]
    with pytest.raises(agents.CheckpointError, match=r"reset\.end: not in the checkpoint, 700"):
        later = dataclasses.replace(config.reset, method="regrama", end=700)
        agents.train(dataclasses.replace(config, run_dir=str(run_dir), reset=later), resume=True)


def test_damaged_checkpoints_are_refused(full_run, tmp_path):
    """Truncated anywhere, or with a byte changed, a checkpoint is refused as a CheckpointError
    (never a traceback from deep inside the reader, never a silently different state); a file of
    the first format (no checksum) still loads."""
    config, full_dir, _, _ = full_run
    template = agents.Trainer(config).state_shapes()
    good = (full_dir / "checkpoint.ckpt").read_bytes()
    path = tmp_path / "damaged.ckpt"
    for cut in (12, 100, len(good) // 2, len(good) - 10, len(good) - 3):
        path.write_bytes(good[:cut])
        with pytest.raises(agents.CheckpointError, match="truncated"):
            agents.load_checkpoint(path, template)
    for offset in (len(good) // 3, int(len(good) * 0.8), len(good) - 20):
        flipped = bytearray(good)
        flipped[offset] ^= 0x10
        path.write_bytes(bytes(flipped))
        with pytest.raises(agents.CheckpointError, match="damaged"):
            agents.load_checkpoint(path, template)
    huge = good[:8] + struct.pack("<Q", 2**62) + good[16:]  # a damaged header length
    path.write_bytes(huge)
    with pytest.raises(agents.CheckpointError, match="ends inside its header"):
        agents.load_checkpoint(path, template)
    path.write_bytes(good + b"x")  # something appended
    with pytest.raises(agents.CheckpointError, match="checksum does not match"):
        agents.load_checkpoint(path, template)
    first_format = b"NSCKPT1\n" + good[8:-9]  # the same file without its checksum trailer
    path.write_bytes(first_format)
    old, _ = agents.load_checkpoint(path, template)
    new, _ = agents.load_checkpoint(full_dir / "checkpoint.ckpt", template)
    assert eqx.tree_equal(_checkpoint._unwrap_keys(old), _checkpoint._unwrap_keys(new))


def test_host_loop_follows_the_compiled_loop(full_run, tmp_path):
    """The same task stepped from Python (as dm_control is) gives the compiled run's metrics."""
    config, full_dir, summary, _ = full_run
    host = dataclasses.replace(config, env="test/point-mass-host", run_dir=str(tmp_path / "h"))
    host_summary = agents.train(host)
    assert host_summary["updates"] == summary["updates"]
    got, want = rows(tmp_path / "h")[1:], rows(full_dir)[1:]
    assert [r[:3] for r in got] == [r[:3] for r in want]
    np.testing.assert_allclose(
        [float(r[3]) for r in got], [float(r[3]) for r in want], rtol=1e-3, atol=1e-4
    )


def test_host_envs_stepped_inside_the_program_follow_the_python_loop(full_run, monkeypatch):
    """A host environment's segments run as compiled pieces that step it through a callback,
    or (`host_in_program = False`) as a Python loop of one call per env step: both give the
    same warm-up and learning records, whatever the piece length (here 3 bodies, 7 warm-up
    steps, so segments end mid-piece)."""
    config, _, _, _ = full_run
    config = dataclasses.replace(config, env="test/point-mass-host")
    out = {}
    for in_program in (True, False):
        monkeypatch.setattr(agents.Trainer, "host_in_program", in_program)
        monkeypatch.setattr(agents.Trainer, "piece_bodies", 3)
        monkeypatch.setattr(agents.Trainer, "piece_warmup", 7)
        trainer = agents.Trainer(config)
        try:
            assert (trainer.host is not None) == in_program
            ts = trainer.initial_state()
            ts, warm, _ = trainer.segment(ts, 0, False)
            ts, stats, metrics = trainer.segment(ts, 0, True, bodies=5)
            out[in_program] = (warm.sum(1), stats.sum(1), metrics, ts.agent, trainer.env_states)
        finally:
            trainer.close()
    (w1, s1, m1, a1, e1), (w0, s0, m0, a0, e0) = out[True], out[False]
    np.testing.assert_array_equal(w1, w0)
    np.testing.assert_allclose(s1, s0, rtol=1e-5)
    assert m1.keys() == m0.keys() and all(m1[k].shape == m0[k].shape == (2, 5) for k in m1)
    for k in m1:
        np.testing.assert_allclose(m1[k], m0[k], rtol=1e-3, atol=1e-5, err_msg=k)
    floats = lambda tree: jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    for x, y in zip(floats((a1, e1)), floats((a0, e0)), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(
    "error",
    [
        envs.WorkerError("worker 1 of 'test/point-mass-host' died"),
        KeyboardInterrupt("Ctrl-C while the environments step"),
    ],
)
def test_an_error_while_stepping_a_host_env_inside_the_program_is_raised_as_itself(full_run, error):
    """Whatever a host environment raises from inside the compiled piece (a dead worker, a NaN
    action, the KeyboardInterrupt of a Ctrl-C that arrives while the callback runs) reaches the
    caller as that exception, not as the runtime's wrapper of it."""
    config, _, _, _ = full_run
    trainer = agents.Trainer(dataclasses.replace(config, env="test/point-mass-host"))
    try:
        assert trainer.host is not None
        ts = trainer.initial_state()

        def broken(state, action):
            raise error

        trainer.envs[1].step = broken
        with pytest.raises(type(error), match=str(error)):
            trainer.segment(ts, 0, False)
    finally:
        trainer.close()


@pytest.mark.parametrize("env", ["test/point-mass", "test/point-mass-host"])
def test_training_state_is_updated_in_place(full_run, env):
    """Every call that returns the next training state takes the old one's buffers (donation):
    a call that copied the replay buffer instead cost a copy of it per env step (host loop)."""
    config, _, _, _ = full_run
    trainer = agents.Trainer(dataclasses.replace(config, env=env))
    try:
        ts = trainer.initial_state()
        for learning in (False, True):
            replay, critic = ts.replay.data.obs, ts.agent.critic.members[0].net.head.weight
            ts, _, _ = trainer.segment(ts, 0, learning)
            jax.block_until_ready(ts)
            assert replay.is_deleted() and critic.is_deleted(), learning
            assert not ts.replay.data.obs.is_deleted()
        assert int(ts.replay.size[0]) == config.learning_starts + trainer.segment_env_steps
    finally:
        trainer.close()


def test_surgery_runs_every_surgery_period_and_when_resets_are_due(base_config, monkeypatch):
    calls = []

    def fake(self, agent, state, states, batch, key, updates, since):
        calls.append(self.every)
        return state, states, {"surgery/ran": jnp.ones((), jnp.float32)}

    monkeypatch.setattr(_loop.Surgery, "step", fake)
    every4 = agents.SurgeryConfig(every=4)
    for reset, due_after in (
        (agents.ResetConfig(), {2: True, 4: False, 6: True, 0: False}),
        # resets every 6 updates: the step also runs when a reset is due (u = 6, 12)
        (agents.ResetConfig(method="regrama", every=6), {2: True, 4: True, 6: True, 8: False}),
    ):
        config = dataclasses.replace(
            base_config, seeds=(0,), surgery=every4, reset=reset, replay_ratio=2.0
        )
        env = envs.make("test/point-mass", num_envs=2, episode_length=20)
        agent = agents.SAC(config.sac, env.observation_size, env.action_size)
        loop = _loop.Loop(agent, env, config, _loop.Surgery.of(config))

        @jax.jit
        def init(key, loop=loop, env=env):
            env_state, step = env.reset(jax.random.wrap_key_data(key))
            return loop.init(key, env_state, step.obs)

        ts = init(jax.random.key_data(jax.random.key(0)))
        assert (loop.env_per_body, loop.updates_per_body) == (1, 2)
        updates = jax.jit(loop.updates)
        # one cycle of 2 updates per body: u0 + 2 updates done after it
        for u0, due in due_after.items():
            ran = float(updates(ts, jnp.int32(u0))[1]["surgery/ran"])
            assert ran == 1.0 if due else np.isnan(ran), (reset.method, u0, ran)
    assert calls and set(calls) == {4}
    assert float(_loop.last_finite(jnp.asarray([1.0, 2.0, jnp.nan]))) == 2.0


def test_logged_metrics_start_afresh_for_the_units_a_reset_replaced(base_config):
    """The trainer tells the metrics it logs which units the reset strategy replaced: with
    every hidden unit of the critic replaced, the logged Fisher proxy's ages are back to zero
    (one update old without the reset)."""
    env = envs.make("test/point-mass", num_envs=2, episode_length=20)
    agent = agents.SAC(base_config.sac, env.observation_size, env.action_size)
    rng = np.random.default_rng(0)
    f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    n, o, a = 8, env.observation_size, env.action_size
    batch = agents.Batch(f32(n, o), jnp.tanh(f32(n, a)), f32(n), f32(n, o), jnp.zeros(n))
    state = agent.init(jax.random.key(0))
    ages = {}
    for method in ("none", "redo"):
        config = dataclasses.replace(
            base_config,
            surgery=agents.SurgeryConfig(metrics=("fisher",), every=1),
            reset=agents.ResetConfig(method="redo", tau=1e9, every=1)
            if method == "redo"
            else agents.ResetConfig(),
        )
        surgery = _loop.Surgery.of(config)
        states = surgery.init(agent, state, batch, jax.random.key(1))
        _, states, _ = surgery.step(
            agent, state, states, batch, jax.random.key(2), jnp.int32(1), jnp.int32(0)
        )
        fisher = states["critic"]["metrics"]["fisher"]
        ages[method] = {k: np.asarray(v) for k, v in fisher.ages.items()}
    hidden = [k for k, v in ages["none"].items() if v.size > 1]
    assert hidden and all((ages["none"][k] == 1).all() for k in hidden)
    assert all((ages["redo"][k] == 0).all() for k in hidden)


def test_per_unit_records_match_the_logged_fractions_and_count_resets(base_config, tmp_path):
    """With surgery.units, each record writes units/<env step>.npz: the last surgery step's
    per-unit scores (their fraction <= tau is the logged one) and each unit's reset count
    (ReDo with a threshold above every score replaces every hidden unit every 100 updates)."""
    config = dataclasses.replace(
        base_config,
        seeds=(0,),
        run_dir=str(tmp_path / "units"),
        surgery=agents.SurgeryConfig(metrics=("grama", "dormant"), every=50, tau=0.5, units=True),
        reset=agents.ResetConfig(method="redo", tau=1e9, every=100),
    )
    agents.train(config)
    run_dir = tmp_path / "units"
    files = sorted(int(p.stem) for p in (run_dir / "units").glob("*.npz"))
    assert files == [200, 400, 600, 800, 1000] and not list((run_dir / "units").glob("*tmp*"))
    logged = {(int(r[0]), r[2]): float(r[3]) for r in rows(run_dir)[1:]}
    for step in files[1:]:
        with np.load(run_dir / "units" / f"{step}.npz") as data:
            arrays = dict(data)
        groups = sorted(k.split("/")[-1] for k in arrays if k.startswith("resets/critic/"))
        assert groups
        updates = (step - 200) // 2  # 2 envs, one update per vector step
        for g in groups:
            counts = arrays[f"resets/critic/{g}"]
            assert counts.shape[0] == 1 and (counts == updates // 100).all(), (step, g)
            for metric in ("grama", "dormant"):
                scores = arrays[f"score/critic/{metric}/{g}"][0]
                want = logged[(step, f"surgery/critic/{metric}/{g}")]
                assert float(np.mean(scores <= 0.5)) == pytest.approx(want, abs=1e-6)


def test_surgery_figures_travel_packed_and_keep_the_last_finite_value_per_figure():
    nan = np.nan
    cycles = np.array([[1.0, 5.0, nan], [2.0, nan, nan], [nan, nan, nan]], np.float32)
    np.testing.assert_array_equal(np.asarray(_loop.last_finite(jnp.asarray(cycles))), [2, 5, nan])
    shapes = {"a": jax.ShapeDtypeStruct((), jnp.float32), "b": jax.ShapeDtypeStruct((2, 3), int)}
    layout = _loop.Packing.of(shapes)
    assert layout.size == 7
    values = {"a": jnp.float32(0.5), "b": jnp.arange(6).reshape(2, 3)}
    packed = layout.pack(values)
    np.testing.assert_array_equal(np.asarray(packed), [0.5, 0, 1, 2, 3, 4, 5])
    back = layout.unpack(packed)
    assert list(back) == ["a", "b"] and back["b"].shape == (2, 3) and back["b"].dtype == np.float32
    np.testing.assert_array_equal(np.asarray(back["b"]), np.arange(6).reshape(2, 3))
    empty = _loop.Packing(())
    assert empty.size == 0 and empty.pack({}).shape == (0,) and empty.unpack(jnp.zeros(0)) == {}


@pytest.mark.parametrize(
    "ratio,cycle,shape",
    [
        (1.0, 2, (2, 2)),
        (0.5, 2, (4, 2)),
        (2.0, 2, (1, 2)),
        (1.5, 2, (4, 6)),
        (8.0, 2, (1, 8)),
        (0.25, 1, (4, 1)),
        (1 / 3, 1, (3, 1)),
    ],
)
def test_replay_ratio_body_shapes(ratio, cycle, shape):
    env_steps, updates = _loop.body_shape(ratio, cycle)
    assert (env_steps, updates) == shape
    assert updates % cycle == 0 and abs(updates / env_steps - ratio) < 1e-9


@pytest.mark.parametrize("env", ["test/point-mass", "test/point-mass-host"])
def test_records_stay_on_the_segment_grid_whatever_learning_starts_is(base_config, tmp_path, env):
    """A warm-up that ends off the segment grid is followed by a shorter first learning segment,
    so records and evaluations fall on multiples of log_every / eval_every (as published curves
    do); the trajectory is the one a run cut into shorter segments follows."""
    config = dataclasses.replace(
        base_config, seeds=(0,), learning_starts=100, steps=800, checkpoint_every=400
    )
    runs = {}
    for log_every, name in ((200, "off_grid"), (100, "fine")):
        steps: list[int] = []
        run_env = env if name == "off_grid" else "test/point-mass"
        c = dataclasses.replace(
            config, env=run_env, log_every=log_every, run_dir=str(tmp_path / name)
        )
        summary = agents.train(c, callbacks=[lambda step, m, s=steps: s.append(step)])
        evals = [r for r in rows(tmp_path / name) if r[2] == "eval/episode_return"]
        runs[name] = steps, summary, {int(r[0]): float(r[3]) for r in evals}
    steps, summary, evals = runs["off_grid"]
    assert steps == [100, 200, 400, 600, 800]
    assert sorted(evals) == [400, 800] and sorted(runs["fine"][2]) == [400, 800]
    assert summary["updates"] == runs["fine"][1]["updates"] == 350  # 700 env steps, 2 envs
    for step in (400, 800):
        np.testing.assert_allclose(evals[step], runs["fine"][2][step], rtol=1e-4, atol=1e-5)


def test_fractional_replay_ratio_counts(full_run):
    config, _, _, _ = full_run
    trainer = agents.Trainer(dataclasses.replace(config, replay_ratio=0.5))
    assert (trainer.loop.env_per_body, trainer.loop.updates_per_body) == (4, 2)
    assert trainer.segment_env_steps == 200  # 25 bodies × 4 vector steps × 2 envs


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_metric_files_on_resume_drop_a_torn_last_record_and_refuse_a_broken_one(tmp_path, kind):
    """A run killed while writing leaves a partial last record: resuming drops it (with the rows
    after the checkpoint). A broken record before the end is an error naming the file, and the
    file is left as it was."""
    from agents.training._sinks import CSVSink, JSONLSink

    sink_type = {"csv": CSVSink, "jsonl": JSONLSink}[kind]
    path = tmp_path / f"metrics.{kind}"
    sink = sink_type(path, [0])
    for step in (100, 200, 300):
        sink.write(step, {"train/episode_return": [float(step)]})
    sink.close()
    whole = path.read_text()
    # torn mid-record (no newline): dropped even where the piece would parse as a record
    torn = "300,0,train/episode_return,3." if kind == "csv" else whole.splitlines()[-1][:9]
    path.write_text(whole + torn)
    sink = sink_type(path, [0], keep_until=200)
    sink.write(300, {"train/episode_return": [3.5]})
    sink.close()
    if kind == "csv":
        with open(path, newline="") as f:
            got = [(int(r[0]), float(r[3])) for r in list(csv.reader(f))[1:]]
    else:
        records = map(json.loads, path.read_text().splitlines())
        got = [(r["env_steps"], r["train/episode_return"]) for r in records]
    assert got == [(100, 100.0), (200, 200.0), (300, 3.5)]
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:5]  # broken in the middle of the file
    broken = "\n".join(lines) + "\n"
    path.write_text(broken)
    with pytest.raises(ValueError, match=rf"metrics\.{kind}: line 2 cannot be read"):
        sink_type(path, [0], keep_until=300)
    assert path.read_text() == broken
    assert not path.with_name(path.name + ".tmp").exists()
    if kind == "csv":  # csv's own errors (a field over its size limit) are reported the same way
        path.write_text(f'env_steps,seed,name,value\n1,0,"{"x" * 200_000}",1.0\n2,0,a,1\n')
        with pytest.raises(ValueError, match="line 2 cannot be read"):
            sink_type(path, [0], keep_until=300)


def test_resume_reads_every_metric_file_before_rewriting_any(full_run, tmp_path):
    config, full_dir, _, _ = full_run
    run_dir = tmp_path / "run"
    shutil.copytree(full_dir, run_dir)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[3] = "{broken\n"
    (run_dir / "metrics.jsonl").write_text("".join(lines))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    more = dataclasses.replace(config, run_dir=str(run_dir), steps=config.steps + 200)
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 4 cannot be read"):
        agents.train(more, resume=True)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_a_checkpoint_header_without_counters_is_refused(full_run, tmp_path):
    config, full_dir, _, _ = full_run
    run_dir = tmp_path / "run"
    shutil.copytree(full_dir, run_dir)
    ckpt = run_dir / "checkpoint.ckpt"
    state, header = agents.load_checkpoint(ckpt, agents.Trainer(config).state_shapes())
    agents.save_checkpoint(ckpt, state, {"config": header["config"]})
    with pytest.raises(agents.CheckpointError, match="lacks env_steps, updates in its header"):
        agents.train(dataclasses.replace(config, run_dir=str(run_dir)), resume=True)


def test_compiled_functions_are_shared_only_under_the_same_compiler_options(
    base_config, monkeypatch
):
    """Trainers of one program share their compiled functions in-process, but a trainer under
    other `compiler_options` compiles its own: options set later are never ignored."""
    config = dataclasses.replace(base_config, seeds=(7,))
    monkeypatch.setattr(agents.Trainer, "compiler_options", None)
    plain = agents.Trainer(config)
    assert agents.Trainer(dataclasses.replace(config, seeds=(3,)))._segment is plain._segment
    monkeypatch.setattr(agents.Trainer, "compiler_options", {"xla_backend_optimization_level": 0})
    level0 = agents.Trainer(config)
    assert level0._segment is not plain._segment
    assert agents.Trainer(config)._segment is level0._segment


#: a dm_control run: the smallest task whose episodes move a target in the model, one seed
DMC_RUN = dict(
    env="dmc/reacher-easy",
    seeds=(0,),
    steps=800,
    num_envs=2,
    episode_length=50,
    learning_starts=100,
    buffer_size=1000,
    log_every=100,
    eval_every=400,
    eval_episodes=1,
    checkpoint_every=100,
    sinks=("csv", "jsonl"),
)

# A run of `agents.train` in its own process. The processes share a persistent compilation
# cache: only the first compiles, each restart loads its programs (the same programs, so the
# same records) and is killed soon after.
_DMC_SCRIPT = """\
import dataclasses, sys, time
import jax, agents
jax.config.update("jax_compilation_cache_dir", sys.argv[3])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
agents.Trainer.compiler_options = {"xla_backend_optimization_level": 0}
config = dataclasses.replace(agents.load_run_config(sys.argv[1]), run_dir=sys.argv[2])
pause = lambda step, metrics: time.sleep(0.2)
agents.train(config, resume=sys.argv[4] == "1", callbacks=[pause])
"""


def _dmc_process(spec: Path, run_dir: Path, cache: Path, resume: bool) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")  # the cache loader's notices
    args = [str(spec), str(run_dir), str(cache), "1" if resume else "0"]
    return subprocess.Popen([sys.executable, "-c", _DMC_SCRIPT, *args], cwd=ROOT, env=env)


def _jsonl_values(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in ln.items() if not k.startswith("perf/")} for ln in lines]


@pytest.fixture(scope="module")
def dmc_runs(base_config, tmp_path_factory):
    """The same dm_control run uninterrupted (its environments stepped in-process) and killed
    with SIGKILL at random moments three times and resumed each time (one worker process for
    the two environments of the seed), each in its own process."""
    root = tmp_path_factory.mktemp("dmc")
    cache = root / "jax-cache"
    specs = {}
    for name, workers in (("full", 0), ("killed", 1)):
        config = dataclasses.replace(
            base_config, **DMC_RUN, env_workers=workers, run_dir=str(root / name)
        )
        specs[name] = root / f"{name}-config"  # a fresh run refuses a folder with files
        specs[name].mkdir()
        (specs[name] / "config.json").write_text(json.dumps({"config": dataclasses.asdict(config)}))
    killed_dir, full_dir = root / "killed", root / "full"
    ckpt = killed_dir / "checkpoint.ckpt"
    kills: list[tuple[int, float]] = []  # (env steps of the checkpoint before, delay)
    full = None
    for attempt in range(3):
        proc = _dmc_process(specs["killed"], killed_dir, cache, resume=attempt > 0)
        before = _checkpoint.read_header(ckpt)["env_steps"] if ckpt.exists() else 0
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:  # until a new checkpoint
            if ckpt.exists() and _checkpoint.read_header(ckpt)["env_steps"] > before:
                break
            time.sleep(0.01)
        delay = random.uniform(0.0, 0.4)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append((before, delay))
        if full is None:  # the programs are in the cache now
            full = _dmc_process(specs["full"], full_dir, cache, resume=False)
    last = _dmc_process(specs["killed"], killed_dir, cache, resume=True)
    assert last.wait(timeout=300) == 0 and full is not None and full.wait(timeout=300) == 0
    return killed_dir, full_dir, kills


def test_dm_control_run_killed_and_resumed_three_times_matches_uninterrupted_run(dmc_runs):
    """dm_control environments are checkpointed with the run (simulator, model and task
    changes, random states, episode counters): the resumed run's records are the
    uninterrupted run's, value for value."""
    killed_dir, full_dir, kills = dmc_runs
    assert [b for b, _ in kills] == sorted({b for b, _ in kills}), kills  # each one got further
    assert rows(killed_dir) == rows(full_dir), kills
    assert _jsonl_values(killed_dir) == _jsonl_values(full_dir), kills
    returns = [r for r in rows(full_dir) if r[2] == "train/episode_return"]
    assert len(returns) >= 4  # episodes ended and restarted along the way
    summaries = [json.loads((d / "summary.json").read_text()) for d in (killed_dir, full_dir)]
    for key in ("env_steps", "updates", "eval/episode_return", "train/episode_return"):
        assert summaries[0][key] == summaries[1][key]


def test_dm_control_checkpoint_without_or_with_damaged_environment_state(dmc_runs, tmp_path):
    """A checkpoint without the environments' state (written before checkpoints held it)
    resumes with new episodes and says so; one whose state is damaged is refused, naming
    what is wrong, and the run folder stays as it was."""
    _, full_dir, _ = dmc_runs
    config = agents.load_run_config(full_dir)
    template = agents.Trainer(config).state_shapes()
    state, header, extras = _checkpoint.load_checkpoint_extras(
        full_dir / "checkpoint.ckpt", template
    )
    assert header["host_envs"] == {"saved": True, "why": None}
    assert "envs/0/model/geom_pos" in extras and "envs/0/physics" in extras
    meta = {k: v for k, v in header.items() if k not in ("leaves", "extras")}
    cases = {
        "old": ({k: v for k, v in meta.items() if k != "host_envs"}, {}),
        "damaged": (meta, {k: v for k, v in extras.items() if k != "envs/0/random_key"}),
    }
    for name, (saved_meta, saved_extras) in cases.items():
        run_dir = tmp_path / name
        shutil.copytree(full_dir, run_dir)
        agents.save_checkpoint(run_dir / "checkpoint.ckpt", state, saved_meta, saved_extras)
        files = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
        resumed = dataclasses.replace(config, run_dir=str(run_dir))
        if name == "old":
            with pytest.warns(agents.InexactResumeWarning, match="written before checkpoints"):
                agents.train(resumed, resume=True)
        else:
            with pytest.raises(agents.CheckpointError, match="random_key is missing"):
                agents.train(resumed, resume=True)
            assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == files
