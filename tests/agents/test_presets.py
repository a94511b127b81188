"""Presets: the studies shipped with the package (`neurosurgery sweep --preset NAME`), their
hyperparameters against the paper's tables, their smoke variants (the same grid, only the
budget changed; one run of each trained), bad input refused before any work, and the demo."""

import dataclasses
import json
import time
from pathlib import Path

import pytest

from agents.training import grama_preset, preset_names, read_preset, train
from agents.training._config import config_to_dict
from agents.training._presets import (
    COLLAPSED,
    SMOKE,
    SMOKE_PER_AGENT,
    SMOKE_PERIODS,
    StudyError,
    smoke_variant,
)
from agents.training._study import RUNTIME, expand
from agents.training._trainer import Trainer
from agents.training.cli import main

PRESETS = ("bro-dmc", "bro-scaling", "dacer-mujoco", "main", "sac-activations")
#: every option the smoke variant may change
BUDGET = {*SMOKE, *SMOKE_PERIODS, *(k for v in SMOKE_PER_AGENT.values() for k in v), *RUNTIME}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and "__object__" not in v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _methods(runs) -> set[str]:
    """Each run's options but the budget-like ones, as a comparable string."""
    keep = lambda c: {k: v for k, v in _flat(config_to_dict(c)).items() if k not in BUDGET}
    return {json.dumps(keep(r.config), sort_keys=True) for r in runs}


@pytest.fixture(scope="module")
def expanded():
    """Every preset's runs and its smoke variant's runs (expanded once: each checks its envs)."""
    return {
        name: (expand(read_preset(name), "full"), expand(read_preset(name, smoke=True), "smoke"))
        for name in PRESETS
    }


def test_the_presets_are_the_shipped_files_and_named_in_the_help():
    import inspect

    from agents.training.cli import SweepCommand

    assert preset_names() == PRESETS
    source = inspect.getsource(SweepCommand)  # --preset's help lists them
    assert all(f"{name}," in source or f"{name} (" in source for name in PRESETS)
    page = (Path(__file__).parents[2] / "docs" / "presets.md").read_text()
    assert all(f"--preset {name}" in page for name in PRESETS)


def test_smoke_variants_keep_the_grid_and_change_only_the_budget(expanded):
    for name, (full, smoke) in expanded.items():
        assert _methods(smoke) == _methods(full), name  # the same methods, nothing else changed
        study = read_preset(name, smoke=True)
        assert study.name == f"{name}-smoke" and study.out == f"{read_preset(name).out}-smoke"
        for run in smoke:
            c = run.config
            assert (c.env, c.steps, c.seeds, c.surgery.every) == (
                "test/point-mass",
                400,
                (0, 1),
                50,
            )
            if c.reset.method != "none":
                assert c.reset.every == 50, run.name
        # points that differed only in the task are one run of the smoke variant
        tasks = {r.config.env for r in full}
        assert len(smoke) == len(_methods(full)) <= len(full), (name, tasks)
    assert {len(f) for f, _ in expanded.values()} == {2, 6, 12, 27}


def test_the_presets_follow_the_papers_tables(expanded):
    bro, _ = expanded["bro-dmc"]
    assert sorted({r.config.env for r in bro}) == [
        "dmc/dog-stand",
        "dmc/dog-walk",
        "dmc/humanoid-stand",
        "dmc/humanoid-walk",
    ]
    for run in bro:
        c = run.config
        assert c.seeds == (0, 1, 2, 3, 4) and c.steps == 1_000_000 and c.buffer_size == 1_000_000
        if c.reset.method != "none":  # the options of agents.training.grama_preset
            paper = grama_preset(c.reset.method)
            assert c.reset == paper["reset"] and c.surgery.tau == paper["surgery"].tau
            assert (c.agent, c.replay_ratio, c.bro) == ("bro", 2.0, paper["bro"])
    assert {(r.config.reset.method, r.config.reset.tau) for r in bro} == {
        ("none", None),
        ("redo", 0.02),
        ("regrama", 0.01),
    }
    scaling, _ = expanded["bro-scaling"]
    assert {(r.config.bro.actor_blocks, r.config.bro.critic_blocks) for r in scaling} == {
        (b, b) for b in (1, 2, 3, 4)
    }
    assert all(r.config.bro.critic_lr == 1e-3 and r.config.bro.actor_lr == 1e-4 for r in scaling)
    sac, _ = expanded["sac-activations"]
    for run in sac:
        c = run.config
        assert c.sac.actor.activation == c.sac.critic.activation in ("relu", "tanh", "sigmoid")
        assert (c.sac.actor_lr, c.sac.critic_lr, c.sac.batch_size) == (3e-4, 1e-3, 256)
        assert (c.sac.policy_delay, c.learning_starts, c.sac.critic.width) == (2, 5000, 256)
        if c.reset.method != "none":
            assert c.reset.tau == 0.0 and c.reset.every == 1000
            capped = c.reset.method == "regrama" and c.env == "brax/humanoid"
            assert c.reset.max_fraction == (0.05 if capped else None), run.name
    assert {r.config.env for r in sac} == {"brax/ant", "brax/halfcheetah", "brax/humanoid"}
    dacer, _ = expanded["dacer-mujoco"]
    assert {r.config.env for r in dacer} == {"brax/ant", "brax/walker2d"}
    for run in dacer:
        d = run.config.dacer
        assert (d.actor_lr, d.critic_lr, d.alpha_lr, d.batch_size) == (3e-4, 3e-4, 3e-2, 256)
        assert (d.critic.width, d.critic.depth, d.denoiser_width, d.denoiser_depth) == (
            256,
            2,
            256,
            3,
        )


#: the run of each smoke variant trained: one with resets, of the preset's smallest networks
#: where the grid varies their size (the main preset's two runs train in the demo's test)
TRAINED = {"bro-dmc": -1, "bro-scaling": 2, "dacer-mujoco": -1, "sac-activations": -1}


#: trained in the default suite; the others (BRO's and DACER's compiles take minutes on two
#: cores, and their agents train on the same task in test_bro.py and test_dacer.py) with --runslow
QUICK = ("sac-activations",)


@pytest.mark.parametrize(
    "name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in sorted(TRAINED)]
)
def test_one_run_of_each_smoke_variant_trains(name, expanded, tmp_path, monkeypatch):
    """A run of each smoke variant trains to the end and resets units; every run of each was
    built and checked by the expansion."""
    monkeypatch.setattr(Trainer, "compiler_options", {"xla_backend_optimization_level": 0})
    run = expanded[name][1][TRAINED[name]]
    assert run.config.reset.method == "regrama", run.name
    config = dataclasses.replace(run.config, run_dir=str(tmp_path / "run"))
    start = time.perf_counter()
    summary = train(config)
    print(f"{name}: {run.name} in {time.perf_counter() - start:.1f} s")
    assert summary["env_steps"] == 400
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    names = {k for line in lines for k in json.loads(line)}
    assert any(k.startswith("surgery/critic/") and k.endswith("reset") for k in names), names


# ---- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,message",
    [
        (["--preset", "bro"], "unknown preset 'bro'; did you mean 'bro-dmc'? Known presets: "),
        (["--preset", "atari"], "Known presets: bro-dmc, bro-scaling, dacer-mujoco, main, sac-"),
        (["STUDY", "--preset", "main"], "or --preset main, not both"),
        (["STUDY", "--smoke"], "--smoke applies to presets"),
        (["--smoke"], "--smoke applies to presets (neurosurgery sweep --preset NAME --smoke)"),
        (["--status", "OUT", "--preset", "main"], "it takes no study file or --preset"),
        ([], "holds no study to continue; give the study file (neurosurgery sweep STUDY_FILE"),
    ],
)
def test_bad_preset_input_fails_before_any_work(tmp_path, capsys, args, message):
    study = tmp_path / "study.toml"
    study.write_text('[base]\nenv = "test/point-mass"\n')
    out = tmp_path / "out"
    args = [{"STUDY": str(study), "OUT": str(out)}.get(a, a) for a in args]
    assert main(["sweep", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and not out.exists()


def test_a_smoke_variant_leaves_a_folder_of_the_full_preset_alone(tmp_path, capsys):
    from agents.training._sweep import prepare

    out = tmp_path / "main"
    prepare(read_preset("main"), out)  # the full study's folder, nothing trained yet
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for extra in (["--preset", "main", "--smoke"], ["--smoke"]):
        assert main(["sweep", *extra, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "holds another study: it is study 'main', not 'main-smoke'" in err or (
            f"not to the study saved in {out}" in err
        ), err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    "grid,message",
    [
        ({"steps": [100, 200]}, "[grid] varies steps, which --smoke sets for every run"),
        ({"sac.critic": [{"width": 8}, {"width": 9}]}, "varies sac.critic.width"),
        ({"reset.every": [10, 20]}, "'reset.every' varies a period that --smoke replaces"),
        (
            {"reset": [{"method": "regrama", "every": 10}, {"method": "regrama", "every": 20}]},
            "'reset' varies a period that --smoke replaces (reset.every)",
        ),
        ({"reset": [{"method": "regrama", "start": 500}]}, "the study sets reset.start"),
    ],
)
def test_smoke_refuses_a_grid_it_cannot_shrink_faithfully(grid, message):
    with pytest.raises(StudyError) as err:
        smoke_variant({"base": {"agent": "sac"}, "grid": grid}, "preset x --smoke")
    assert message in str(err.value) and str(err.value).startswith("preset x --smoke: ")


def test_smoke_sets_only_the_options_of_the_studys_agents():
    data = smoke_variant({"base": {"agent": "bro"}, "grid": {"env": ["dmc/dog-run"]}})
    assert "sac" not in data["base"] and data["base"]["bro"]["critic_width"] == 16
    assert data["grid"]["env"] == [SMOKE["env"]] and set(COLLAPSED) <= set(SMOKE)


# ---- the demo -----------------------------------------------------------------------------
def test_the_demo_is_a_study_and_its_report(tmp_path, capsys, monkeypatch):
    """`make demo`'s program on the smoke variant: `neurosurgery sweep --preset main`, then
    `neurosurgery report`, printing the report's tables and the path of report.html; run again,
    it trains nothing."""
    from agents.experiments import demo

    monkeypatch.setattr(Trainer, "compiler_options", {"xla_backend_optimization_level": 0})
    out = tmp_path / "main"
    assert demo.main(["--smoke", "--no-anatomy", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"study main-smoke in {out}: 2 runs" in printed
    assert "| sac+regrama | 2 |" in printed and "| sac | 2 |" in printed
    assert printed.rstrip().endswith(f"report: {out / 'report' / 'report.html'}")
    assert (out / "report" / "report.html").stat().st_size > 10_000
    assert demo.main(["--smoke", "--no-anatomy", "--out", str(out)]) == 0
    assert "training 0 now" in capsys.readouterr().out


def test_a_sweep_without_a_study_names_both_ways_to_give_one(capsys):
    assert main(["sweep"]) == 2
    err = capsys.readouterr().err
    assert "give a study file (neurosurgery sweep STUDY_FILE --out DIR) or a preset" in err
    assert "presets: bro-dmc, bro-scaling, dacer-mujoco, main, sac-activations" in err
