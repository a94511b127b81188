"""The Weights & Biases sink, in W&B's offline mode: the offline run folders hold the records."""

import dataclasses
import json
import struct
from pathlib import Path

import pytest

import agents
from agents.training import WandbConfig, read_metrics

pytestmark = pytest.mark.usefixtures("quick_compiles")

wandb_proto = pytest.importorskip("wandb.proto.wandb_internal_pb2")


def offline_records(run_dir: Path) -> dict[str, dict]:
    """W&B's offline runs under `run_dir/wandb`, read from their log files (W&B's record log: a
    7-byte file header, 32 KiB blocks of records each with a 7-byte header — checksum, length,
    type: full, first, middle, last — holding protobuf `Record`s): run id → its project, group,
    name and history rows."""
    runs: dict[str, dict] = {}
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        assert data[:4] == b":W&B"
        pos, block, chunks, pending = 7, 32768, [], b""
        while pos + 7 <= len(data):
            if block - pos % block < 7:
                pos += block - pos % block
                continue
            _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            if length == 0 and kind == 0:
                pos += block - pos % block
                continue
            chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
            pending = chunk if kind in (1, 2) else pending + chunk
            if kind in (1, 4):
                chunks.append(pending)
        for raw in chunks:
            record = wandb_proto.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = runs.setdefault(record.run.run_id, {"history": []})
                run.update(
                    project=record.run.project,
                    group=record.run.run_group,
                    name=record.run.display_name,
                )
            elif kind == "history":
                row = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
                runs.setdefault(path.stem.split("-", 1)[1], {"history": []})["history"].append(row)
    return runs


def test_offline_runs_hold_every_record_with_names_from_the_config(
    base_config, tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "cartpole-run"
    config = dataclasses.replace(
        base_config,
        run_dir=str(run_dir),
        sinks=("csv", "wandb"),
        wandb=WandbConfig(project="plasticity"),
        surgery=agents.SurgeryConfig(every=50),
    )
    agents.train(config)
    ids = json.loads((run_dir / "wandb.json").read_text())
    runs = offline_records(run_dir)
    assert set(runs) == set(ids.values()) and len(runs) == len(config.seeds)
    csv = read_metrics(run_dir / "metrics.csv")
    for seed in config.seeds:
        run = runs[ids[str(seed)]]
        assert (run["project"], run["group"]) == ("plasticity", "cartpole-run")
        assert run["name"] == f"cartpole-run-seed{seed}"
        logged = [(r["_step"], r["train/episode_return"]) for r in run["history"]]
        assert logged == [(s, v) for s, v in csv["train/episode_return"][seed]]
        assert any("surgery/critic/grama" in r for r in run["history"])
    # a resumed run continues the same W&B runs
    agents.train(dataclasses.replace(config, steps=1200), resume=True)
    assert json.loads((run_dir / "wandb.json").read_text()) == ids
    steps = [r["_step"] for r in offline_records(run_dir)[ids["0"]]["history"]]
    assert max(steps) == 1200


def test_without_the_extra_the_sink_is_refused_naming_it(base_config, monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    bad = dataclasses.replace(base_config, run_dir=str(tmp_path / "r"), sinks=("wandb",))
    with pytest.raises(
        ValueError, match=r"install the wandb extra \(pip install -e '\.\[wandb\]'\)"
    ):
        bad.validate()
