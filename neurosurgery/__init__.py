"""neurosurgery: measure and restore the learning capacity of neurons in Equinox models.

Anatomy (which parameter entries belong to which unit, read from the traced program), metric
plugins (GraMa, τ-dormant, ...), selection rules, resets of the model and its optax optimizer
state, and reset strategies that combine them on a schedule.
"""

from ._anatomy._anatomy import Anatomy as Anatomy
from ._anatomy._build import anatomy as anatomy
from ._anatomy._declare import DeclaredGroup as DeclaredGroup
from ._anatomy._groups import LeafSlice as LeafSlice
from ._anatomy._groups import NeuronGroup as NeuronGroup
from ._errors import AnatomyError as AnatomyError
from ._methods._cbp import CBP as CBP
from ._methods._cbp import CBPState as CBPState
from ._methods._chain import Chain as Chain
from ._methods._cpr import CPR as CPR
from ._methods._cpr import CPRState as CPRState
from ._methods._cpr import cpr_fraction as cpr_fraction
from ._methods._injection import Injected as Injected
from ._methods._injection import PlasticityInjection as PlasticityInjection
from ._methods._injection import injectable as injectable
from ._methods._l2init import L2InitState as L2InitState
from ._methods._l2init import l2_init as l2_init
from ._methods._reborn import ReBorn as ReBorn
from ._methods._schedule import AnyDue as AnyDue
from ._methods._schedule import Schedule as Schedule
from ._methods._schedule import When as When
from ._methods._select import Selection as Selection
from ._methods._select import bottom_fraction as bottom_fraction
from ._methods._select import capped_threshold as capped_threshold
from ._methods._select import inactive_ratio as inactive_ratio
from ._methods._select import network_inactive_ratio as network_inactive_ratio
from ._methods._select import threshold as threshold
from ._methods._strategy import Operand as Operand
from ._methods._strategy import Resetter as Resetter
from ._methods._strategy import StepResult as StepResult
from ._methods._strategy import Strategy as Strategy
from ._methods._strategy import check_step as check_step
from ._methods._whole import FullReset as FullReset
from ._methods._whole import ShrinkPerturb as ShrinkPerturb
from ._methods._whole import full_reset as full_reset
from ._methods._whole import shrink_and_perturb as shrink_and_perturb
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
from ._metrics._compare import Comparison as Comparison
from ._metrics._compare import checked_score as checked_score
from ._metrics._compare import compare as compare
from ._metrics._compare import score_all as score_all
from ._metrics._observe import SITES as SITES
from ._metrics._observe import Observation as Observation
from ._metrics._observe import normalise as normalise
from ._metrics._observe import observe as observe
from ._presets import METRICS as METRICS
from ._presets import STRATEGIES as STRATEGIES
from ._presets import metric as metric
from ._presets import strategy as strategy
from ._presets import strategy_options as strategy_options
from ._registry import method_options as method_options
from ._registry import register_method as register_method
from ._registry import register_metric as register_metric
from ._surgery._init import Initializer as Initializer
from ._surgery._init import kaiming_normal as kaiming_normal
from ._surgery._init import lecun_normal as lecun_normal
from ._surgery._init import orthogonal as orthogonal
from ._surgery._init import uniform_fan_in as uniform_fan_in
from ._surgery._init import xavier_uniform as xavier_uniform
from ._surgery._optstate import adam_per_entry as adam_per_entry
from ._surgery._optstate import adamw_per_entry as adamw_per_entry
from ._surgery._optstate import reset_optimizer_state as reset_optimizer_state
from ._surgery._optstate import scale_by_adam_per_entry as scale_by_adam_per_entry
from ._surgery._optstate import scale_optimizer_state as scale_optimizer_state
from ._surgery._reset import ResetResult as ResetResult
from ._surgery._reset import reset as reset

__version__ = "0.1.0"
