"""The anatomy: a model traced into its program, the neuron groups read off that program (which
parameter entries each unit owns, where it is observed), and the groups a model declares itself."""
