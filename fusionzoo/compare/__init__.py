"""Honest comparisons: seeds with confidence intervals, grids of fusion blocks and settings, and
leaderboards built from run folders (``fusionzoo compare``)."""

from fusionzoo.compare.grid import Cell, expand_grid, parse_seeds
from fusionzoo.compare.leaderboard import aggregate, build_leaderboard, collect_runs, run_numbers, write_leaderboard
from fusionzoo.compare.runner import run_grid
from fusionzoo.compare.seeds import train_seeds
from fusionzoo.compare.stats import mean_ci, t_quantile

__all__ = [
    "Cell",
    "aggregate",
    "build_leaderboard",
    "collect_runs",
    "expand_grid",
    "mean_ci",
    "parse_seeds",
    "run_grid",
    "run_numbers",
    "t_quantile",
    "train_seeds",
    "write_leaderboard",
]
