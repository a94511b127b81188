"""Agents (SAC; BRO and DACER to come), their networks, and the shared trainer and run pipeline."""
from ._mlp import ACTIVATIONS as ACTIVATIONS
from ._mlp import MLP as MLP
from ._mlp import NetworkConfig as NetworkConfig
from ._replay import Replay as Replay
from ._replay import replay_add as replay_add
from ._replay import replay_init as replay_init
from ._replay import replay_sample as replay_sample
from ._sac import SAC as SAC
from ._sac import Actor as Actor
from ._sac import Batch as Batch
from ._sac import Critic as Critic
from ._sac import Probe as Probe
from ._sac import SACConfig as SACConfig
from ._sac import SACState as SACState
from ._sac import squashed_gaussian as squashed_gaussian
