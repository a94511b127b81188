"""Training: configuration, studies (`sweep`), the trainer (vmapped seeds, compiled segments, host loops), replay,
checkpoints, metric sinks, neuron surgery through the library's pipeline, and the command."""

from ._checkpoint import CheckpointError as CheckpointError
from ._checkpoint import InexactResumeWarning as InexactResumeWarning
from ._checkpoint import RunWriteError as RunWriteError
from ._checkpoint import load_checkpoint as load_checkpoint
from ._checkpoint import load_checkpoint_extras as load_checkpoint_extras
from ._checkpoint import save_checkpoint as save_checkpoint
from ._config import ResetConfig as ResetConfig
from ._config import SurgeryConfig as SurgeryConfig
from ._config import TrainConfig as TrainConfig
from ._config import WandbConfig as WandbConfig
from ._config import grama_preset as grama_preset
from ._loop import TrainState as TrainState
from ._presets import preset_names as preset_names
from ._presets import read_preset as read_preset
from ._replay import Replay as Replay
from ._replay import replay_add as replay_add
from ._replay import replay_init as replay_init
from ._replay import replay_sample as replay_sample
from ._run import load_run_config as load_run_config
from ._run import train as train
from ._sinks import ConsoleSink as ConsoleSink
from ._sinks import CSVSink as CSVSink
from ._sinks import History as History
from ._sinks import JSONLSink as JSONLSink
from ._sinks import TensorBoardSink as TensorBoardSink
from ._sinks import read_metrics as read_metrics
from ._study import LauncherConfig as LauncherConfig
from ._study import Study as Study
from ._study import StudyError as StudyError
from ._study import read_study as read_study
from ._surgery import Surgery as Surgery
from ._sweep import status_report as status_report
from ._sweep import sweep as sweep
from ._trainer import NonFiniteError as NonFiniteError
from ._trainer import Trainer as Trainer
