"""Agents (SAC, BRO, DACER), their networks, and the shared trainer and run pipeline.

`agents.algorithms` holds the algorithms behind one `Agent` protocol, `agents.networks` their
networks, `agents.training` the trainer and the `neurosurgery` command, and
`agents.experiments` the main job and the demonstrations.
"""

from .algorithms import BRO as BRO
from .algorithms import DACER as DACER
from .algorithms import SAC as SAC
from .algorithms import Actor as Actor
from .algorithms import Agent as Agent
from .algorithms import Batch as Batch
from .algorithms import BROConfig as BROConfig
from .algorithms import BROState as BROState
from .algorithms import Critic as Critic
from .algorithms import DACERConfig as DACERConfig
from .algorithms import DACERState as DACERState
from .algorithms import Objective as Objective
from .algorithms import SACConfig as SACConfig
from .algorithms import SACState as SACState
from .algorithms import TwinCritic as TwinCritic
from .algorithms import ddpm_sample as ddpm_sample
from .algorithms import fit_gmm as fit_gmm
from .algorithms import gmm_entropy as gmm_entropy
from .algorithms import ode_sample as ode_sample
from .algorithms import squashed_gaussian as squashed_gaussian
from .algorithms import vp_schedule as vp_schedule
from .networks import ACTIVATIONS as ACTIVATIONS
from .networks import MLP as MLP
from .networks import NetworkConfig as NetworkConfig
from .training import CheckpointError as CheckpointError
from .training import ConsoleSink as ConsoleSink
from .training import CSVSink as CSVSink
from .training import History as History
from .training import InexactResumeWarning as InexactResumeWarning
from .training import JSONLSink as JSONLSink
from .training import NonFiniteError as NonFiniteError
from .training import Replay as Replay
from .training import ResetConfig as ResetConfig
from .training import RunWriteError as RunWriteError
from .training import SurgeryConfig as SurgeryConfig
from .training import TensorBoardSink as TensorBoardSink
from .training import TrainConfig as TrainConfig
from .training import Trainer as Trainer
from .training import TrainState as TrainState
from .training import WandbConfig as WandbConfig
from .training import grama_preset as grama_preset
from .training import load_checkpoint as load_checkpoint
from .training import load_checkpoint_extras as load_checkpoint_extras
from .training import load_run_config as load_run_config
from .training import read_metrics as read_metrics
from .training import replay_add as replay_add
from .training import replay_init as replay_init
from .training import replay_sample as replay_sample
from .training import save_checkpoint as save_checkpoint
from .training import train as train
