"""Metrics and reset methods register themselves where they are defined: the names `ns.metric`
and `ns.strategy` accept, the methods' options and their help all come from there, and bad
registrations are refused by name."""

import dataclasses
import re
from pathlib import Path

import pytest

import neurosurgery as ns
from neurosurgery import _registry

DOCS = Path(__file__).parents[2] / "docs"


@pytest.fixture
def registry():
    """Registrations a test makes are removed after it."""
    metrics, methods, where = (
        dict(_registry.METRICS),
        dict(_registry.METHODS),
        dict(_registry._WHERE),
    )
    yield
    for live, saved in (
        (_registry.METRICS, metrics),
        (_registry.METHODS, methods),
        (_registry._WHERE, where),
    ):
        live.clear()
        live.update(saved)  # type: ignore[arg-type]


def test_the_library_registers_every_metric_and_method_under_its_own_name():
    assert set(ns.METRICS) >= {"grama", "grama_activation", "grama_weight", "dormant", "gxd_mean"}
    for name in ns.METRICS:
        assert ns.metric(name).name == name
    assert library_names("method") == {
        "redo",
        "regrama",
        "regrama_activation",
        "regrama_weight",
        "shrink_perturb",
        "full_reset",
        "cbp",
        "reborn",
        "cpr",
        "injection",
    }
    # options, defaults and help come from each method's own function
    cbp = ns.method_options(ns.STRATEGIES["cbp"])
    assert cbp["replacement_rate"].default == 1e-4 and cbp["maturity"].default == 100
    assert "mature units replaced per update" in cbp["replacement_rate"].help
    cpr = ns.method_options(ns.STRATEGIES["cpr"])
    assert cpr["replacement_rate"].default == 0.012
    assert "fraction of the way to fresh weights" in cpr["replacement_rate"].help
    assert ns.strategy_options("cbp") == {k: v.default for k, v in cbp.items()}
    for name, factory in ns.STRATEGIES.items():
        for option, found in ns.method_options(factory).items():
            assert found.help, (name, option)


def test_a_metric_in_a_file_of_its_own_answers_to_its_name(registry, tmp_path, monkeypatch):
    (tmp_path / "my_registered_metric.py").write_text(
        "import dataclasses\n"
        "import neurosurgery as ns\n\n\n"
        '@ns.register_metric("weight_norm_eps", weight_norm_big_eps={"eps": 1.0})\n'
        "@dataclasses.dataclass(frozen=True)\n"
        "class WeightNormEps:\n"
        "    eps: float = 0.1\n\n"
        "    @property\n"
        "    def name(self):\n"
        '        return "weight_norm_eps" if self.eps == 0.1 else "weight_norm_big_eps"\n\n'
        "    def init(self, anatomy):\n"
        "        return ns.EmptyState()\n\n"
        "    def score(self, anatomy, observation, state):\n"
        "        return ns.WeightMagnitude(eps=self.eps).score(anatomy, observation, state)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("my_registered_metric")
    assert ns.metric("weight_norm_eps").eps == 0.1
    assert ns.metric("weight_norm_big_eps").eps == 1.0


def test_bad_registrations_are_refused_by_name(registry):
    @dataclasses.dataclass(frozen=True)
    class Named:
        name: str = "grama"

        def init(self, anatomy):
            return ns.EmptyState()

        def score(self, anatomy, observation, state):
            return {}, state

    with pytest.raises(ValueError, match=r"'grama' is registered twice: by neurosurgery\._metr"):
        ns.register_metric("grama")(Named)
    with pytest.raises(ValueError, match="is named 'grama'; a registered metric's `name` is"):
        ns.register_metric("other_name")(Named)
    with pytest.raises(ValueError, match=r"'My Metric'.*not a lower-case identifier"):
        ns.register_metric("My Metric")(Named)
    assert ns.metric("grama") == ns.GraMa()  # the library's own is untouched

    def undocumented(every: int = 10, strength: float = 1.0):
        """mine: does something.

        Args:
            every: updates between steps.
        """

    with pytest.raises(ValueError, match="option 'strength' has no help; document it"):
        ns.register_method("mine")(undocumented)
    assert "mine" not in ns.STRATEGIES
    with pytest.raises(ValueError, match="'cbp' is registered twice"):
        ns.register_method("cbp")(lambda every=1: None)


def test_a_method_registered_in_a_file_of_its_own_is_built_by_name(registry):
    @ns.register_method("every_other_full_reset")
    def make(every: int = 10, reset_optimizer: bool = True) -> ns.Strategy:
        """every_other_full_reset: a full reset every `every` updates.

        Args:
            every: gradient updates between resets.
            reset_optimizer: start the optimizer state afresh.
        """
        return ns.FullReset(ns.Schedule(every), reset_optimizer)

    made = ns.strategy("every_other_full_reset", every=7)
    assert made == ns.FullReset(ns.Schedule(7), True)
    assert ns.method_options(make)["every"].help == "gradient updates between resets."
    with pytest.raises(ValueError, match="tau do not apply to the every_other_full_reset"):
        ns.strategy("every_other_full_reset", tau=0.1)


def library_names(kind: str) -> set[str]:
    """The names the library itself registers (a docs page or a test may register more)."""
    return {
        n
        for (k, n), where in _registry._WHERE.items()
        if k == kind and where.startswith("neurosurgery.")
    }


def _table_names(page: str, header: str) -> set[str]:
    """The backticked names of the second column of the table under `header`."""
    text = (DOCS / page).read_text()
    table = text[text.index(header) :].split("\n\n")[0]
    names: set[str] = set()
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        names.update(re.findall(r"`([a-z_]+)`", cells[1]))
    return names


def test_the_docs_tables_name_every_registered_metric_and_method():
    metrics = _table_names("metrics.md", "| metric | name | what it measures |")
    assert metrics == library_names("metric")
    methods = _table_names("reset.md", "| method | name | what it does |")
    assert methods - {"l2_init"} == library_names("method")


def test_every_registered_metric_and_method_keeps_its_state_the_optax_way():
    """One convention for states: a NamedTuple (optax's `EmptyState` where there is none; a
    chain's is the tuple of its members')."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    assert ns.EmptyState is optax.EmptyState
    make = lambda k: eqx.nn.MLP(3, 1, 5, 1, key=k)
    model = make(jax.random.key(0))
    anatomy = ns.anatomy(model, jnp.zeros(3))
    params = eqx.filter(model, eqx.is_array)
    states = {f"metric {n}": ns.init_state(ns.metric(n), anatomy, params) for n in ns.METRICS}
    for name in library_names("method"):
        options = {"every": 10} if name == "full_reset" else {}
        states[f"method {name}"] = ns.init_state(ns.strategy(name, **options), anatomy, params)
    chain = ns.strategy("regrama+cbp")
    states["chain"] = ns.init_state(chain, anatomy, params)
    for what, state in states.items():
        assert isinstance(state, tuple), what
        if what != "chain":
            assert hasattr(type(state), "_fields"), f"{what}: {type(state).__name__}"
    assert all(hasattr(type(s), "_fields") for s in states["chain"])
