"""Reading results: aggregate statistics over runs and tasks."""

from ._stats import (
    MIN_SEEDS,
    Estimate,
    FewSeedsWarning,
    Ratio,
    iqm,
    mean,
    median,
    normalised,
    stratified_bootstrap,
)

__all__ = [
    "MIN_SEEDS",
    "Estimate",
    "FewSeedsWarning",
    "Ratio",
    "iqm",
    "mean",
    "median",
    "normalised",
    "stratified_bootstrap",
]
