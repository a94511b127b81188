"""One vectorized interface over Brax, MuJoCo Playground and native dm_control.

```python
import envs

with envs.make("dmc/cartpole-swingup", num_envs=8, seed=0) as env:
    state, step = env.reset()
    state, step = env.step(state, actions)  # float32 [8, env.action_size] in [-1, 1]
```

Names are `brax/<name>`, `playground/<Name>` and `dmc/<domain>-<task>`; `envs.names()` lists
them all. Brax and Playground environments are pure JAX (`env.jittable`), dm_control
environments run in worker processes.
"""

from ._core import Env as Env
from ._core import Step as Step
from ._dmc import DmcEnv as DmcEnv
from ._dmc import DmcState as DmcState
from ._dmc import WorkerError as WorkerError
from ._jax import JaxEnv as JaxEnv
from ._jax import JaxState as JaxState
from ._registry import make as make
from ._registry import names as names
