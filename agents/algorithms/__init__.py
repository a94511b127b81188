"""The algorithms: SAC, BRO and DACER behind one `Agent` protocol, each network's loss an
`Objective` written once for the update and for neuron surgery."""

from ._agent import Agent as Agent
from ._agent import Batch as Batch
from ._agent import Objective as Objective
from ._bro import BRO as BRO
from ._bro import BROConfig as BROConfig
from ._bro import BROState as BROState
from ._dacer import DACER as DACER
from ._dacer import DACERConfig as DACERConfig
from ._dacer import DACERState as DACERState
from ._diffusion import ddpm_sample as ddpm_sample
from ._diffusion import ode_sample as ode_sample
from ._diffusion import vp_schedule as vp_schedule
from ._gmm import fit_gmm as fit_gmm
from ._gmm import gmm_entropy as gmm_entropy
from ._sac import SAC as SAC
from ._sac import Actor as Actor
from ._sac import Critic as Critic
from ._sac import SACConfig as SACConfig
from ._sac import SACState as SACState
from ._sac import TwinCritic as TwinCritic
from ._steps import squashed_gaussian as squashed_gaussian
