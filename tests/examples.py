"""How many examples a property test draws: a few by default, the full count under --runslow.

Each example of the generated-architecture tests compiles its own programs, so the default
suite draws a few of them (derandomized: the same few on every run) and `pytest --runslow`
draws the full count.
"""

FULL = False  # set by tests/conftest.py when --runslow is given


def examples(full: int, default: int) -> int:
    """`full` under --runslow, else `default` (at most `full`)."""
    return full if FULL else min(default, full)
