"""Errors raised by neurosurgery. Each message names the problem and the fix."""


class AnatomyError(ValueError):
    """A model cannot be mapped to neuron groups, or a value does not match its anatomy."""
