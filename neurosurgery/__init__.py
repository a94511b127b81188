"""neurosurgery: measure and restore the learning capacity of neurons in Equinox models."""

from ._anatomy import Anatomy as Anatomy
from ._build import anatomy as anatomy
from ._declare import DeclaredGroup as DeclaredGroup
from ._errors import AnatomyError as AnatomyError
from ._groups import LeafSlice as LeafSlice
from ._groups import NeuronGroup as NeuronGroup

__version__ = "0.1.0"
