"""Shared fixtures. Slow learning checks, and the property tests' full example counts
(`tests/examples.py`), run only with --runslow."""

import gc
import os
import shutil
import tempfile

#: The tests' programs compile without LLVM's optimisations: on 2 cores compiling dominates the
#: suite, and this takes about 30 % off it (measured on the function-preservation, metric,
#: training and command-line modules: 163 s -> 113 s and 152 s -> 113 s). Set before jax starts
#: its backend, so the test workers and the processes they start (which inherit it) all use it;
#: an `XLA_FLAGS` that already names an optimisation level is left as it is.
_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _FLAGS:
    os.environ["XLA_FLAGS"] = f"{_FLAGS} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run slow learning/speed checks")


#: the compilation cache this session's processes share, named to the test workers and to the
#: processes the tests start (command-line runs, studies, Slurm jobs)
CACHE_VARIABLE = "NEUROSURGERY_TEST_COMPILATION_CACHE"


def pytest_configure(config: pytest.Config) -> None:
    from tests import examples

    examples.FULL = bool(config.getoption("--runslow"))
    _share_compiled_programs(config)


def _share_compiled_programs(config: pytest.Config) -> None:
    """Every process of the session (both test workers, and every `neurosurgery` process a
    test starts) reads and writes one persistent compilation cache, created for the session
    and removed after it: a program that took a while to compile (the trainer's segment of a
    small run, say) is loaded, not compiled again, by the next module, worker or process that
    traces the same program. jax keys an entry by the program, the compile options, the
    backend and the jax version, so a loaded program is the one a compile would have made.
    Without a size limit jax takes no lock: an entry read while another process writes it
    fails to load, and jax then compiles (its warning is ignored in pyproject.toml). A size
    limit would lock, but jax then scans the whole cache at every write, which cost more than
    the cache saved."""
    cache = os.environ.get(CACHE_VARIABLE)
    if cache is None:  # the session's first process: the workers and subprocesses inherit it
        cache = tempfile.mkdtemp(prefix="neurosurgery-tests-jax-")
        config.stash[_CACHE_OWNED] = cache
        os.environ[CACHE_VARIABLE] = cache
    settings = {
        "jax_compilation_cache_dir": cache,
        # programs that compile faster than this are not worth a file (measured: 0 and 0.3
        # save the same time on the command-line tests)
        "jax_persistent_cache_min_compile_time_secs": 0.3,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    for name, value in settings.items():
        os.environ[name.upper()] = str(value)
        jax.config.update(name, value)


_CACHE_OWNED = pytest.StashKey[str]()


def pytest_unconfigure(config: pytest.Config) -> None:
    cache = config.stash.get(_CACHE_OWNED, None)
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)


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
