"""Reading results: tidy results files, aggregate statistics over runs and tasks, reports."""

from ._inspect import Inspection, inspect, jaccard, quadrants
from ._report import Report, final_scores, report
from ._results import COLUMNS, Row, Run, find_runs, read_rows, rows_of, write_rows
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
    "COLUMNS",
    "MIN_SEEDS",
    "Estimate",
    "FewSeedsWarning",
    "Inspection",
    "Ratio",
    "Report",
    "Row",
    "Run",
    "final_scores",
    "find_runs",
    "inspect",
    "iqm",
    "jaccard",
    "mean",
    "median",
    "normalised",
    "quadrants",
    "read_rows",
    "report",
    "rows_of",
    "stratified_bootstrap",
    "write_rows",
]
