"""One vectorized interface over Brax, MuJoCo Playground and native dm_control.

```python
import envs

with envs.make("dmc/cartpole-swingup", num_envs=8, seed=0) as env:
    state, step = env.reset()
    state, step = env.step(state, actions)  # float32 [8, env.action_size] in [-1, 1]
```

Names are `brax/<name>`, `playground/<Name>`, `dmc/<domain>-<task>` and the test task
`test/point-mass`; `envs.names()` lists them all. Brax and Playground environments are pure JAX (`env.jittable`), dm_control
environments run in worker processes.

The public names are imported on first use: a dm_control worker process imports
`envs._dmc_worker` and so this package, and should not pay for importing JAX.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core import Env as Env
    from ._core import Step as Step
    from ._core import host_step as host_step
    from ._dmc import DmcEnv as DmcEnv
    from ._dmc import DmcState as DmcState
    from ._dmc import StateNotSaved as StateNotSaved
    from ._dmc import WorkerError as WorkerError
    from ._jax import JaxEnv as JaxEnv
    from ._jax import JaxState as JaxState
    from ._playground import PLAYGROUND_IMPLS as PLAYGROUND_IMPLS
    from ._registry import make as make
    from ._registry import names as names

_PUBLIC = {
    "Env": "._core",
    "Step": "._core",
    "host_step": "._core",
    "DmcEnv": "._dmc",
    "DmcState": "._dmc",
    "StateNotSaved": "._dmc",
    "WorkerError": "._dmc",
    "JaxEnv": "._jax",
    "JaxState": "._jax",
    "PLAYGROUND_IMPLS": "._playground",
    "make": "._registry",
    "names": "._registry",
}

__all__ = sorted(_PUBLIC)  # pyright: ignore[reportUnsupportedDunderAll]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'envs' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
