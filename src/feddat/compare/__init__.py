"""`feddat compare`: every method on one benchmark over several seeds, as the paper tabulates it.

A comparison is a folder: one run directory per (method variant, seed) under runs/, then the
report written from whatever finished: table.md and table.csv (scores per client and mean,
global and personal, final and mean of the last three evaluations, mean ± std over seeds,
differences to a reference method with their t-test's p-value and seeds), costs.csv (parameters, bytes,
compute, time, memory) and PNG plots (score against rounds, compute and bytes; per-client
bars). A run whose summary.json exists is finished and reused; an unfinished one continues
from its last round checkpoint, so an interrupted compare picks up where it stopped.

A *variant* is a method plus configuration overrides under a label: the FedDAT ablations are
presets, `label=method:key=value:key=value` defines others, and compute-matched variants
(`--matched`) give a baseline as many local epochs as make its compute per round equal the
reference's (FedDAT spends more backbone passes per minibatch than FedAvg).

One module per concern, each importing only those listed before it:
- `variants`: variants, presets and groups, their configurations, compute matching;
- `statistics`: mean ± std over seeds, differences beyond the seed noise;
- `runs`: finished runs read back, and each run's curve, compute and per-client scores;
- `plots`: the PNG plots;
- `tables`: rows over seeds, costs, table.md / table.csv / costs.csv (`write_report`);
- `running`: the shared workspace, reuse and resumption, training a run (`run_compare`).
"""

from __future__ import annotations

from feddat.compare import running
from feddat.compare.plots import write_plots
from feddat.compare.running import PeakMemory, Workspace, config_differences, run_compare, run_status, train_run, trainable_parameters
from feddat.compare.runs import RunResult, client_scores, compute_by_round, curve, evals_by_round, load_compare_run, load_run_dirs, run_path
from feddat.compare.statistics import Difference, difference, mean_std, nanmean, significance, t_critical
from feddat.compare.tables import Row, cost_rows, report_from_dirs, summarise, write_report
from feddat.compare.variants import GROUPS, PRESETS, Variant, check_reference, default_reference, flat_config, matched_variants, parse_variant, parse_variants, passes_per_step, variant_config

__all__ = [
    "Variant", "parse_variants", "matched_variants", "run_compare", "report_from_dirs",
    # what the other commands and the tests use
    "GROUPS", "PRESETS", "PeakMemory", "Row", "RunResult", "Workspace", "client_scores", "compute_by_round", "config_differences", "cost_rows",
    "check_reference", "curve", "default_reference", "Difference", "difference", "evals_by_round", "flat_config", "load_compare_run", "load_run_dirs", "mean_std", "nanmean",
    "parse_variant", "passes_per_step", "run_path", "run_status", "running", "significance", "summarise", "t_critical", "train_run", "trainable_parameters",
    "variant_config", "write_plots", "write_report",
]
