"""Where neuron surgery enters training: `surgery_step`, called every `reset_period` updates.

The call sits inside the compiled update loop, between update cycles. It scores the networks named
in `config.reset_networks` with every logged metric (see `agents._neurons`), and resets the units
the configured method flags when the update count lies in the reset window.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jaxtyping import Array

from ._neurons import neuron_step


def surgery_step(
    agent: Any, config: Any, agent_state: Any, batch: Any, key: Array
) -> tuple[Any, dict[str, Array]]:
    """Score and reset neurons of `config.reset_networks`; returns (state, `surgery/…` metrics)."""
    updates = jnp.asarray(agent_state.updates)
    in_window = updates >= config.reset_start
    if config.reset_end:
        in_window = in_window & (updates < config.reset_end)
    return neuron_step(agent, config, agent_state, batch, key, in_window)
