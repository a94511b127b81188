"""The methods beyond ReDo and ReGraMa from the command line: SAC runs on test/point-mass, and
their bad options."""

import re

import equinox as eqx
import jax
import numpy as np
import pytest

import agents
from agents import BRO, DACER, SAC, BROConfig, DACERConfig, SACConfig, TrainConfig
from agents.training import read_metrics
from agents.training.cli import main
from neurosurgery import L2InitState

from .test_cli import SHARED, TINY

pytestmark = pytest.mark.usefixtures("quick_compiles")

LAYER = "members[0].net.layers[0].linear"
RUNS = {
    "cbp": (["--reset.replacement-rate", "0.01", "--reset.maturity", "20"], f"mature/{LAYER}"),
    "reborn": (["--reset.every", "50", "--reset.share", "0.3"], f"donors/{LAYER}"),
    "cpr": (
        ["--reset.every", "50", "--reset.replacement-rate", "0.1", "--reset.gate", "sigmoid"],
        f"moved/{LAYER}",
    ),
    "injection": (["--reset.at", "50", "--reset.layers", "2"], "injected"),
    # composed: ReGraMa then shrink-and-perturb on the same schedule, with L2-init on top
    "regrama+shrink_perturb": (
        ["--reset.every", "100", "--reset.shrink", "0.9", "--sac.l2-init", "0.001"],
        "shrink_perturb/reset",
    ),
}


@pytest.mark.parametrize("method", list(RUNS))
def test_sac_trains_from_the_command_line(tmp_path, method):
    run_dir = tmp_path / "run"
    options, figure = RUNS[method]
    args = ["--seeds", "0", "--steps", "600", "--no-progress", "--sinks", "csv"]
    args += ["--reset.method", method, *options]
    assert main(["train", "sac", *TINY, *args, "--run-dir", str(run_dir)]) == 0
    curves = read_metrics(run_dir / "metrics.csv")
    values = [v for _, v in curves[f"surgery/critic/{figure}"][0] if np.isfinite(v)]
    assert values  # the method's own figures were logged
    if method in ("cbp", "reborn"):
        assert f"surgery/critic/reset/{LAYER}" in curves
    if method == "cbp":
        assert values[-1] > 0  # units lived past maturity: CBP tracked their ages
    if method == "cpr":
        assert max(values) > 0  # units were moved part of the way
    if method == "injection":
        assert values == [1.0]  # injected once, at update 50
    if method == "regrama+shrink_perturb":
        assert values and set(values) == {1.0}  # S&P acted at every surgery step it logged
        assert f"surgery/critic/regrama/reset/{LAYER}" in curves
        assert "surgery/critic/regrama/flagged" in curves


@pytest.mark.parametrize(
    "args,message",
    [
        (["--reset.method", "cbp", "--reset.replacement-rate", "1.5"], "replacement_rate=1.5"),
        (["--reset.method", "cbp", "--reset.maturity", "-1"], "maturity=-1 is invalid"),
        (["--reset.method", "cbp", "--reset.decay", "1"], "decay=1.0 is invalid"),
        (["--reset.method", "cbp", "--reset.tau", "0.1"], "tau do not apply to the cbp strategy"),
        (
            ["--reset.method", "regrama", "--reset.maturity", "5"],
            "maturity do not apply to the regrama strategy",
        ),
        (["--reset.method", "reborn", "--reset.share", "1"], "share=1.0 is invalid"),
        (["--reset.method", "reborn", "--reset.maturity", "5"], "maturity do not apply"),
        (["--reset.method", "cpr", "--reset.sharpness", "0"], "sharpness=0.0 is invalid"),
        (["--reset.method", "cpr", "--reset.replacement-rate", "2"], "in (0, 1]"),
        (["--reset.method", "cpr", "--reset.gate", "tanh"], "gate='tanh' is unknown"),
        (["--reset.method", "redo", "--reset.gate", "exp"], "gate do not apply to the redo"),
        (["--reset.method", "injection", "--reset.at", "5", "9"], "at=(5, 9) is invalid"),
        (["--reset.method", "injection", "--reset.layers", "0"], "layers=0 is invalid"),
        (["bro", "--reset.method", "injection"], "agent bro is not supported"),
        (["dacer", "--reset.method", "injection"], "agent dacer is not supported"),
        (["--reset.method", "regrama+injection"], "plasticity injection, which cannot be composed"),
        (
            ["--reset.method", "regrama+shrink_perturb", "--reset.maturity", "5"],
            "maturity apply to no member of regrama+shrink_perturb",
        ),
        (["--reset.method", "regrama+", "--reset.every", "5"], "has an empty member"),
        (["--sac.l2-init", "-1"], "sac.l2_init must be >= 0"),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path, capsys, args, message):
    run_dir = tmp_path / "run"
    if args[0] in ("bro", "dacer"):  # TINY's --sac.* options are SAC's alone
        agent, base, args = args[0], SHARED, args[1:]
    else:
        agent, base = "sac", TINY
    assert main(["train", agent, *base, "--no-progress", "--run-dir", str(run_dir), *args]) == 2
    assert message in capsys.readouterr().err
    assert not run_dir.exists()


def test_l2_init_puts_the_pull_first_in_the_actor_and_critic_optimizers():
    """With l2_init > 0 each agent's actor and critic optimizers hold L2-init's anchors (the
    networks' initial parameters); with 0 their states are the plain optimizers' (so runs and
    checkpoints without the option are unchanged)."""
    key = jax.random.key(0)
    for agent_cls, cfg_cls in ((SAC, SACConfig), (BRO, BROConfig), (DACER, DACERConfig)):
        with_pull = agent_cls(cfg_cls(l2_init=0.01), 3, 1)
        state = eqx.filter_jit(with_pull.init)(key)  # one compile, not op-by-op dispatch
        for name in ("actor", "critic"):
            anchors = [
                x
                for x in jax.tree.leaves(
                    with_pull.opt_state(state, name), is_leaf=lambda x: isinstance(x, L2InitState)
                )
                if isinstance(x, L2InitState)
            ]
            assert len(anchors) == 1, (agent_cls.__name__, name)
            params = eqx.filter(getattr(state, name), eqx.is_array)
            for a, p in zip(
                jax.tree.leaves(anchors[0].initial), jax.tree.leaves(params), strict=True
            ):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(p))
        plain = agent_cls(cfg_cls(), 3, 1)
        plain_state = jax.eval_shape(plain.init, key)  # structures only: no compile
        plain_opt = plain.opt_state(plain_state, "critic")
        shapes = eqx.filter(plain_state.critic, lambda x: isinstance(x, jax.ShapeDtypeStruct))
        assert jax.tree.structure(plain_opt) == jax.tree.structure(
            jax.eval_shape(plain.optimizer("critic").init, shapes)
        )
        assert not any(
            isinstance(x, L2InitState)
            for x in jax.tree.leaves(plain_opt, is_leaf=lambda x: isinstance(x, L2InitState))
        )


def test_a_strategy_written_for_the_earlier_step_signature_is_refused_before_any_work(tmp_path):
    from agents.training._config import ResetConfig
    from tests.neurosurgery.test_chain import OldStyle

    config = TrainConfig(
        env="test/point-mass", run_dir=str(tmp_path / "run"), reset=ResetConfig(method=OldStyle())
    )
    with pytest.raises(ValueError, match=r"reset.method: the step of strategy 'halve' takes"):
        agents.train(config)
    assert not (tmp_path / "run").exists()


def test_the_reset_options_are_the_registered_methods_options():
    """`--reset.*` is checked against the registry: every option a registered method takes is
    one, each says which methods take it (their own help), and no other option is there."""
    import dataclasses

    import neurosurgery as ns
    from agents.training._config import ResetConfig, _option_help, strategy_option_names
    from tests.neurosurgery.test_registry import library_names

    takes: dict[str, set[str]] = {}
    for name, factory in ns.STRATEGIES.items():
        if name not in library_names("method"):
            continue  # registered by a docs page or a test
        for option in ns.method_options(factory):
            takes.setdefault(option, set()).add(name)
    assert set(strategy_option_names()) == set(takes)
    assert {f.name for f in dataclasses.fields(ResetConfig)} == {*takes, "method", "networks"}
    for option, methods in takes.items():
        text = _option_help(option)
        named = {m for part in text.split("; ") for m in part.split(": ")[0].split(", ")}
        assert named >= methods, option
    cbp = ns.method_options(ns.STRATEGIES["cbp"])["replacement_rate"].help
    assert cbp.rstrip(".") in _option_help("replacement_rate")


@pytest.mark.parametrize("method", ["cbp", "regrama", "cpr"])
def test_help_after_a_method_lists_its_options_only(capsys, method):
    import neurosurgery as ns
    from agents.training._config import strategy_option_names

    with pytest.raises(SystemExit) as done:
        main(["train", "sac", "--reset.method", method, "--help"])
    assert done.value.code == 0
    shown = set(re.findall(r"--reset\.([a-z-]+)", capsys.readouterr().out))
    own = {o.replace("_", "-") for o in ns.strategy_options(method)}
    assert shown == own | {"method", "networks"}
    assert set(strategy_option_names()) - set(ns.strategy_options(method))  # others hidden


MY_METHOD = '''
import neurosurgery as ns


def every_reset(every: int = 1000, reset_optimizer: bool = True) -> ns.Strategy:
    """every_reset: the whole network re-drawn every `every` updates.

    Args:
        every: gradient updates between resets.
        reset_optimizer: start the optimizer state afresh.
    """
    return ns.FullReset(ns.Schedule(every), reset_optimizer)
'''


def test_a_method_in_a_file_of_its_own_trains_from_the_command_line(tmp_path, monkeypatch, capsys):
    """A reset method is one file: a function of keyword options (documented in its `Args:`),
    named on the command line as `module:function`, its options given as `--reset.*`."""
    (tmp_path / "my_reset_method.py").write_text(MY_METHOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "run"
    args = ["--seeds", "0", "--steps", "600", "--no-progress", "--sinks", "csv"]
    args += ["--reset.method", "my_reset_method:every_reset", "--reset.every", "50"]
    assert main(["train", "sac", *TINY, *args, "--run-dir", str(run_dir)]) == 0
    curves = read_metrics(run_dir / "metrics.csv")
    values = [v for _, v in curves["surgery/critic/reset"][0] if np.isfinite(v)]
    assert values and set(values) == {1.0}  # due at every surgery step, every 50 updates
    with pytest.raises(SystemExit):
        main(["train", "sac", "--reset.method", "my_reset_method:every_reset", "--help"])
    out = capsys.readouterr().out
    shown = set(re.findall(r"--reset\.([a-z-]+)", out))
    assert shown == {"method", "networks", "every", "reset-optimizer"}
    assert "start the optimizer state afresh." in out  # its own Args text is the help
