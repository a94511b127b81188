"""Shared fixtures. Slow learning checks, and the property tests' full example counts
(`tests/examples.py`), run only with --runslow."""

import gc

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run slow learning/speed checks")


def pytest_configure(config: pytest.Config) -> None:
    from tests import examples

    examples.FULL = bool(config.getoption("--runslow"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow check: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop the compiled programs of a test module once it is done.

    Every program XLA compiles for the CPU keeps memory mappings of its code, and Linux allows a
    process 65,530 of them (`vm.max_map_count`): a test worker that kept every module's
    programs reached 63,656 mappings, and XLA then aborted mid-compile, taking the worker's
    other tests with it. Programs are still shared within a module (and by the trainer within a
    module's runs)."""
    yield
    from agents.training import _trainer

    _trainer._JIT_CACHE.clear()
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def getkey():
    """Return a function that hands out fresh PRNG keys."""
    state = {"key": jax.random.key(0)}

    def _getkey() -> jax.Array:
        state["key"], sub = jax.random.split(state["key"])
        return sub

    return _getkey
