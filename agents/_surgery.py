"""Where neuron surgery enters training: `surgery_step`, called every `reset_period` updates.

The call sits inside the compiled update loop, between update cycles. `agent.probes(state, batch,
key)` gives each network with its per-sample inputs and loss (for per-sample gradient scores), and
`agent.networks(state)` the parameters by name; the result must keep the state's structure.
"""

from __future__ import annotations

from typing import Any

from jaxtyping import Array


def surgery_step(
    agent: Any, config: Any, agent_state: Any, batch: Any, key: Array
) -> tuple[Any, dict[str, Array]]:
    """Score and reset neurons of `config.reset_networks`; returns (state, `surgery/…` metrics).

    `config` carries reset, reset_tau, reset_window, reset_max_fraction, reset_networks. No reset
    method is available yet, so this returns the state unchanged and no metrics.
    """
    del agent, config, batch, key
    return agent_state, {}
