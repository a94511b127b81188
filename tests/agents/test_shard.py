"""The seed axis of one run sharded over the process's devices (`--shard-seeds`): two forced
host devices, the state split between them, the same records as on one device."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import dataclasses, json, sys
    sys.path.insert(0, "tests/agents")
    import jax
    from conftest import BASE
    import agents
    from agents.training import read_metrics
    from agents.training._trainer import Trainer

    Trainer.compiler_options = {"xla_backend_optimization_level": 0}
    out = sys.argv[1]
    assert len(jax.devices()) == 2, jax.devices()
    config = dataclasses.replace(
        BASE, seeds=(0, 1, 2, 3), steps=600, sinks=("csv",), run_dir=out + "/sharded",
        shard_seeds=True, reset=agents.ResetConfig(method="regrama", every=50),
        surgery=agents.SurgeryConfig(every=50),
    )
    trainer = Trainer(config)
    state = trainer.initial_state()
    state, _, _ = trainer.segment(state, 0, False)
    devices = {len(x.sharding.device_set) for x in jax.tree.leaves(state)}
    agents.train(dataclasses.replace(config, steps=400))
    agents.train(config, resume=True)  # from the checkpoint at 400, put back on both devices
    agents.train(dataclasses.replace(config, shard_seeds=False, run_dir=out + "/plain"))
    try:
        Trainer(dataclasses.replace(config, seeds=(0, 1, 2)))
        refused = ""
    except ValueError as err:
        refused = str(err)
    curves = lambda run: {
        k: v for k, v in read_metrics(f"{out}/{run}/metrics.csv").items()
        if not k.startswith("perf/")
    }
    print(json.dumps({
        "devices": sorted(devices), "same": curves("sharded") == curves("plain"),
        "names": len(curves("plain")), "refused": refused,
    }))
    """
)


def test_sharded_seeds_give_the_records_of_one_device(tmp_path):
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = {
        **os.environ,
        "XLA_FLAGS": " ".join([*flags, "--xla_force_host_platform_device_count=2"]),
    }
    root = Path(__file__).parents[2]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["devices"] == [2]  # every array of the state lies on both devices
    assert result["same"] and result["names"] > 10
    assert "3 seeds do not split evenly over this process's 2 devices" in result["refused"]


def test_the_command_line_takes_shard_seeds():
    from agents.training.cli import _config, parse

    cmd = parse(["train", "sac", "--shard-seeds"])
    assert _config(cmd).shard_seeds and not _config(parse(["train", "sac"])).shard_seeds
