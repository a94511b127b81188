"""Metric plugins: per-unit scores (higher = more active), one small module per metric.

Magnitude scores are normalised by the layer mean; shares and similarities that are already
scale-free say so (`Saturation`, `Duplicates`). See `_base` for the protocol every metric
follows and the helpers they share.
"""

from ._base import EmptyState as EmptyState
from ._base import Metric as Metric
from ._base import RunningAverage as RunningAverage
from ._base import Scores as Scores
from ._base import after_reset as after_reset
from ._base import init_state as init_state
from ._base import per_unit_mean as per_unit_mean
from ._base import unit_reduce as unit_reduce
from ._dormant import Dormant as Dormant
from ._duplicates import Duplicates as Duplicates
from ._fisher import Fisher as Fisher
from ._gradient_activity import GradientActivity as GradientActivity
from ._gradient_flow import GradientFlow as GradientFlow
from ._grama import GRAMA_NAMES as GRAMA_NAMES
from ._grama import GraMa as GraMa
from ._gxd import GXD as GXD
from ._rank import FeatureRank as FeatureRank
from ._rank import effective_rank as effective_rank
from ._rank import srank as srank
from ._saturation import Saturation as Saturation
from ._utility import Utility as Utility
from ._utility import UtilityState as UtilityState
from ._utility import contribution as contribution
from ._weight_magnitude import WeightMagnitude as WeightMagnitude
