"""neurosurgery: measure and restore the learning capacity of neurons in Equinox models.

Anatomy (which parameter entries belong to which unit, read from the traced program), metric
plugins (GraMa, τ-dormant, ...), selection rules, resets of the model and its optax optimizer
state, and reset strategies that combine them on a schedule.
"""

from ._anatomy import Anatomy as Anatomy
from ._build import anatomy as anatomy
from ._cbp import CBP as CBP
from ._cbp import CBPState as CBPState
from ._chain import Chain as Chain
from ._compare import Comparison as Comparison
from ._compare import checked_score as checked_score
from ._compare import compare as compare
from ._compare import score_all as score_all
from ._cpr import CPR as CPR
from ._cpr import CPRState as CPRState
from ._cpr import cpr_fraction as cpr_fraction
from ._declare import DeclaredGroup as DeclaredGroup
from ._errors import AnatomyError as AnatomyError
from ._groups import LeafSlice as LeafSlice
from ._groups import NeuronGroup as NeuronGroup
from ._init import Initializer as Initializer
from ._init import kaiming_normal as kaiming_normal
from ._init import lecun_normal as lecun_normal
from ._init import orthogonal as orthogonal
from ._init import uniform_fan_in as uniform_fan_in
from ._init import xavier_uniform as xavier_uniform
from ._injection import Injected as Injected
from ._injection import PlasticityInjection as PlasticityInjection
from ._injection import injectable as injectable
from ._l2init import L2InitState as L2InitState
from ._l2init import l2_init as l2_init
from ._metrics import GXD as GXD
from ._metrics import Dormant as Dormant
from ._metrics import Duplicates as Duplicates
from ._metrics import EmptyState as EmptyState
from ._metrics import FeatureRank as FeatureRank
from ._metrics import Fisher as Fisher
from ._metrics import GradientActivity as GradientActivity
from ._metrics import GradientFlow as GradientFlow
from ._metrics import GraMa as GraMa
from ._metrics import Metric as Metric
from ._metrics import RunningAverage as RunningAverage
from ._metrics import Saturation as Saturation
from ._metrics import Utility as Utility
from ._metrics import UtilityState as UtilityState
from ._metrics import WeightMagnitude as WeightMagnitude
from ._metrics import after_reset as after_reset
from ._metrics import effective_rank as effective_rank
from ._metrics import init_state as init_state
from ._metrics import per_unit_mean as per_unit_mean
from ._metrics import srank as srank
from ._metrics import unit_reduce as unit_reduce
from ._observe import SITES as SITES
from ._observe import Observation as Observation
from ._observe import normalise as normalise
from ._observe import observe as observe
from ._optstate import adam_per_entry as adam_per_entry
from ._optstate import adamw_per_entry as adamw_per_entry
from ._optstate import reset_optimizer_state as reset_optimizer_state
from ._optstate import scale_by_adam_per_entry as scale_by_adam_per_entry
from ._optstate import scale_optimizer_state as scale_optimizer_state
from ._presets import METRICS as METRICS
from ._presets import STRATEGIES as STRATEGIES
from ._presets import metric as metric
from ._presets import strategy as strategy
from ._presets import strategy_options as strategy_options
from ._reborn import ReBorn as ReBorn
from ._reset import ResetResult as ResetResult
from ._reset import reset as reset
from ._schedule import AnyDue as AnyDue
from ._schedule import Schedule as Schedule
from ._schedule import When as When
from ._select import Selection as Selection
from ._select import bottom_fraction as bottom_fraction
from ._select import capped_threshold as capped_threshold
from ._select import inactive_ratio as inactive_ratio
from ._select import network_inactive_ratio as network_inactive_ratio
from ._select import threshold as threshold
from ._strategy import FullReset as FullReset
from ._strategy import Operand as Operand
from ._strategy import Resetter as Resetter
from ._strategy import ShrinkPerturb as ShrinkPerturb
from ._strategy import StepResult as StepResult
from ._strategy import Strategy as Strategy
from ._strategy import check_step as check_step
from ._whole import full_reset as full_reset
from ._whole import shrink_and_perturb as shrink_and_perturb

__version__ = "0.1.0"
