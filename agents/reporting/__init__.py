"""Reading results: tidy results files, aggregate statistics over runs and tasks, reports."""

from ._inspect import Inspection, inspect, jaccard, quadrants
from ._published import (
    Curve,
    check_published,
    mean_band,
    published_algorithms,
    published_curve,
    published_tasks,
)
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
    "Curve",
    "Estimate",
    "FewSeedsWarning",
    "Inspection",
    "Ratio",
    "Report",
    "Row",
    "Run",
    "check_published",
    "final_scores",
    "find_runs",
    "inspect",
    "iqm",
    "jaccard",
    "mean",
    "mean_band",
    "median",
    "normalised",
    "published_algorithms",
    "published_curve",
    "published_tasks",
    "quadrants",
    "read_rows",
    "report",
    "rows_of",
    "stratified_bootstrap",
    "write_rows",
]
