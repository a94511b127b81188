"""Surgery on a network and its optimizer: resetting chosen units' entries from fresh weights, and
the matching entries of any optax state; the initializers that draw the fresh weights."""
