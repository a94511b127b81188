"""neurosurgery: measure and restore the learning capacity of neurons in Equinox models."""
