"""``python -m federation.analytics``: federated statistics in one process, each site's part
computed on its own rows only, combined, and compared with the pooled computation.

    python -m federation.analytics                        # NCCTG lung cancer, 3 institutions
    python -m federation.analytics --plot km.png          # and the Kaplan-Meier curves
    python -m federation.analytics --data gbsg2           # German breast cancer study, 3 sites
    python -m federation.analytics --csv a.csv b.csv --numeric age,bmi --time days --event died

The last line printed is one JSON object: the combined statistics, what each site
suppressed, and for each statistic the largest absolute difference from the pooled one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from federation.analytics.columns import column_sums, combine_columns, correlation, cross_products
from federation.analytics.counts import DEFAULT_MIN_COUNT, combine_histograms, quantile_bounds, site_histogram
from federation.analytics.survival import SurvivalCurve, combine_tables, kaplan_meier, log_rank, risk_table

LUNG_NUMERIC = ("age", "ph.karno", "pat.karno", "meal.cal", "wt.loss")
GBSG2_NUMERIC = ("age", "tsize", "pnodes", "progrec", "estrec")


def lung_sites(num_sites: int) -> list[pd.DataFrame]:
    """The NCCTG lung cancer data (shipped with lifelines), one site per institution: the
    ``num_sites`` largest; ``status`` 1 (dead; 0 censored, as lifelines codes it) is the event."""
    from lifelines.datasets import load_lung

    lung = load_lung().dropna(subset=["inst"])
    largest = lung["inst"].value_counts().index[:num_sites]
    sites = [lung[lung["inst"] == inst].copy() for inst in largest]
    for site in sites:
        site["event"] = (site["status"] == 1).astype(int)
    return sites


def gbsg2_sites(num_sites: int, seed: int = 0) -> list[pd.DataFrame]:
    """The German Breast Cancer Study Group 2 data (shipped with lifelines): 686 patients,
    recurrence-free survival in days (``cens`` 1: recurrence or death), dealt to ``num_sites``
    sites at random (seeded): the trial has no site column."""
    from lifelines.datasets import load_gbsg2

    data = load_gbsg2().rename(columns={"cens": "event"})
    order = np.random.default_rng(seed).permutation(len(data))
    return [data.iloc[np.sort(part)].reset_index(drop=True) for part in np.array_split(order, num_sites)]


def csv_sites(paths: Sequence[str]) -> list[pd.DataFrame]:
    return [pd.read_csv(path) for path in paths]


def column_figures(
    sites: list[pd.DataFrame], numeric: Sequence[str]
) -> tuple[dict[str, object], dict[str, float]]:
    """Combined count, missing, mean and std per column; differences from pandas on the pool."""
    combined = combine_columns([{name: column_sums(site[name]) for name in numeric} for site in sites])
    pooled = pd.concat(sites, ignore_index=True)
    figures: dict[str, object] = {
        name: {"count": c.present, "missing": c.missing, "mean": round(c.mean, 6), "std": round(c.std, 6)}
        for name, c in combined.items()
    }
    differences = {
        "count": max(abs(c.present - pooled[name].count()) for name, c in combined.items()),
        "mean": max(abs(c.mean - pooled[name].mean()) for name, c in combined.items()),
        "variance": max(abs(c.variance - pooled[name].var()) for name, c in combined.items()),
    }
    total = cross_products(sites[0][list(numeric)].to_numpy(dtype=float))
    for site in sites[1:]:
        total = total + cross_products(site[list(numeric)].to_numpy(dtype=float))
    reference = pooled[list(numeric)].dropna().corr().to_numpy()
    differences["correlation"] = float(np.max(np.abs(correlation(total) - reference)))
    return figures, {key: float(value) for key, value in differences.items()}


def histogram_figures(
    sites: list[pd.DataFrame], column: str, edges: np.ndarray, min_count: int
) -> dict[str, object]:
    """One column's histogram with small cells suppressed at each site: what the coordinator sees."""
    per_site = [
        site_histogram(site[column].to_numpy(dtype=float), edges, min_count=min_count) for site in sites
    ]
    combined = combine_histograms(per_site)
    pooled, _ = np.histogram(pd.concat(sites)[column].dropna(), bins=edges)
    low, high = quantile_bounds(
        combine_histograms([site_histogram(s[column], edges, min_count=1) for s in sites]), 0.5
    )
    return {
        "column": column,
        "edges": edges.tolist(),
        "combined": combined.counts.tolist(),
        "suppressed": combined.suppressed.tolist(),
        "pooled": pooled.tolist(),
        "suppressed_at_sites": [int(h.suppressed.sum()) for h in per_site],
        "median_within": [low, high],
    }


def survival_figures(
    sites: list[pd.DataFrame], time: str, event: str
) -> tuple[dict[str, object], dict[str, float], list[SurvivalCurve], SurvivalCurve]:
    """Per-site and combined Kaplan-Meier curves and the log-rank test, against lifelines."""
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import multivariate_logrank_test

    tables = [risk_table(site[time].to_numpy(), site[event].to_numpy()) for site in sites]
    combined = kaplan_meier(combine_tables(tables))
    pooled = pd.concat([site.assign(_site=i) for i, site in enumerate(sites)], ignore_index=True)
    reference = KaplanMeierFitter().fit(pooled[time], pooled[event]).survival_function_["KM_estimate"]
    test = log_rank(tables)
    theirs = multivariate_logrank_test(pooled[time], pooled["_site"], pooled[event])
    below_half = combined.times[combined.survival <= 0.5]
    figures: dict[str, object] = {
        "median_survival": float(below_half[0]) if below_half.size else None,
        "log_rank": {"statistic": round(test.statistic, 4), "p_value": round(test.p_value, 6)},
    }
    differences = {
        "kaplan_meier": float(np.max(np.abs(combined.survival - reference.loc[combined.times].to_numpy()))),
        "log_rank": abs(test.statistic - float(theirs.test_statistic)),
    }
    return figures, differences, [kaplan_meier(t) for t in tables], combined


def plot_curves(path: Path, per_site: list[SurvivalCurve], combined: SurvivalCurve, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for curve, name in zip(per_site, names, strict=True):
        axis.step(curve.times, curve.survival, where="post", alpha=0.6, label=name)
    axis.step(combined.times, combined.survival, where="post", color="black", linewidth=2, label="combined")
    axis.fill_between(combined.times, combined.lower, combined.upper, step="post", color="black", alpha=0.12)
    axis.set(
        xlabel="days",
        ylabel="survival",
        ylim=(0, 1.02),
        title="Kaplan-Meier across sites (combined = pooled)",
    )
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m federation.analytics", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--data",
        choices=["lung", "gbsg2"],
        default="lung",
        help="built-in survival data (lifelines): NCCTG lung cancer by institution, or GBSG2 dealt to sites",
    )
    parser.add_argument(
        "--sites", type=int, default=3, help="lung: the largest institutions; gbsg2: random shares"
    )
    parser.add_argument("--csv", nargs="+", metavar="FILE", help="one CSV file per site instead")
    parser.add_argument("--numeric", help="comma-separated numeric columns (CSV)")
    parser.add_argument("--time", default="time")
    parser.add_argument("--event", default="event")
    parser.add_argument("--histogram", default="age", help="the column to draw a histogram of")
    parser.add_argument(
        "--bins", type=float, nargs=3, default=[30.0, 90.0, 5.0], metavar=("LOW", "HIGH", "WIDTH")
    )
    parser.add_argument(
        "--min-count", type=int, default=DEFAULT_MIN_COUNT, help="cells below it are suppressed"
    )
    parser.add_argument("--plot", type=Path, help="write the Kaplan-Meier curves to this PNG")
    args = parser.parse_args(argv)
    if args.csv:
        sites = csv_sites(args.csv)
    else:
        sites = gbsg2_sites(args.sites) if args.data == "gbsg2" else lung_sites(args.sites)
    builtin_numeric = GBSG2_NUMERIC if args.data == "gbsg2" else LUNG_NUMERIC
    numeric = args.numeric.split(",") if args.numeric else list(builtin_numeric)
    columns, column_differences = column_figures(sites, numeric)
    low, high, width = args.bins
    histogram = histogram_figures(
        sites, args.histogram, np.arange(low, high + width / 2, width), args.min_count
    )
    survival, survival_differences, per_site, combined = survival_figures(sites, args.time, args.event)
    if args.plot:
        plot_curves(args.plot, per_site, combined, [f"site {i + 1} ({len(s)})" for i, s in enumerate(sites)])
    result = {
        "sites": len(sites),
        "rows": [len(site) for site in sites],
        "columns": columns,
        "histogram": histogram,
        **survival,
        "max_abs_difference_from_pooled": {**column_differences, **survival_differences},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
