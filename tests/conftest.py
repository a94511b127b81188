"""Shared fixtures. Slow learning checks run only with --runslow."""

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run slow learning/speed checks")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow check: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def getkey():
    """Return a function that hands out fresh PRNG keys."""
    state = {"key": jax.random.key(0)}

    def _getkey() -> jax.Array:
        state["key"], sub = jax.random.split(state["key"])
        return sub

    return _getkey
