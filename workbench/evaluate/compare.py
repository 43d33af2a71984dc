"""`wb compare RUN_A RUN_B ...`: side-by-side metrics and an HTML report with plots.

Runs whose configs differ only in the seed are one arm; arms are summarised
with mean and standard deviation over their seeds.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import WorkbenchError
from workbench.evaluate.metrics import roc_curve
from workbench.manifest import evaluations, train_runs
from workbench.manifest.workspace import Workspace
from workbench.results import Result
from workbench.train.losses import UIR_LOSSES

ROWS = [
    ("verification accuracy", ("verification", "accuracy")),
    ("TAR@FAR=1e-3", ("verification", "tar_at_far_1e-3")),
    ("AUROC (MSP)", ("open_set", "auroc_msp")),
    ("FPR@95%TPR", ("open_set", "fpr_at_95_tpr")),
    ("AUROC (max cosine)", ("open_set", "auroc_max_cos")),
    ("AUROC (energy)", ("open_set", "auroc_energy")),
    ("AUROC (feature norm)", ("open_set", "auroc_feature_norm")),
    ("DIR@FPIR=1e-2", ("open_set", "dir_at_fpir_1e-2")),
    ("DIR@FPIR=1e-1", ("open_set", "dir_at_fpir_1e-1")),
    ("MSP known (mean)", ("open_set", "msp_known", "mean")),
    ("MSP eval_unknown (mean)", ("open_set", "msp_eval_unknown", "mean")),
    ("MSP unlabeled (mean)", ("open_set", "msp_unlabeled", "mean")),
    ("centre distance (mean)", ("centre_distance", "mean")),
    ("centre distance (median)", ("centre_distance", "median")),
]


def _get(metrics: dict, path: tuple[str, ...]) -> float | None:
    value: Any = metrics
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return None if value is None else float(value)


def load_runs(workspace: Workspace, run_ids: list[str]) -> list[dict[str, Any]]:
    runs = []
    with workspace.connect(read_only=True) as con:
        for run_id in run_ids:
            trained = train_runs.require(con, run_id)
            config = trained.config
            evaluation = evaluations.latest(con, run_id)
            if evaluation is None:
                raise WorkbenchError(f"run {run_id!r} has no evaluation: run `wb eval {run_id}` first")
            arm = {k: v for k, v in config.items() if k != "seed"}
            runs.append({"run_id": run_id, "config": config, "arm": json.dumps(arm, sort_keys=True),
                         "snapshot": trained.snapshot, "metrics": evaluation.metrics,
                         "arrays": evaluation.arrays})
    return runs


def arm_name(config: dict[str, Any]) -> str:
    """'baseline (none)', or the open-set loss (UIR's forms named as UIR) and its weight: which run
    is which, in every table."""
    kind = config["uir_loss"]
    if kind == "none":
        return "baseline (none)"
    return f"{'UIR ' if kind in UIR_LOSSES else ''}{kind} (w={config['uir_weight']:g})"


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per arm: mean and std of each metric over the arm's seeds."""
    arms: dict[str, list[dict]] = {}
    for run in runs:
        arms.setdefault(run["arm"], []).append(run)
    table = []
    for members in arms.values():
        row: dict[str, Any] = {"arm": arm_name(members[0]["config"]),
                               "runs": [m["run_id"] for m in members],
                               "seeds": [m["config"]["seed"] for m in members]}
        for label, path in ROWS:
            values = [v for v in (_get(m["metrics"], path) for m in members) if v is not None]
            row[label] = (float(np.mean(values)), float(np.std(values))) if values else None
        table.append(row)
    return table


def _plots(runs: list[dict[str, Any]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.2), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        a = np.load(run["arrays"])
        bins = np.linspace(0, 1, 41)
        if "msp_known" in a:
            ax.hist(a["msp_known"], bins=bins, alpha=0.6, density=True, label="known")
            ax.hist(a["msp_unknown"], bins=bins, alpha=0.6, density=True, label="unknown")
        ax.set_title(f"{arm_name(run['config'])} s{run['config']['seed']}", fontsize=9)
        ax.set_xlabel("max softmax probability")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "msp_histograms.png", dpi=100)
    plt.close(fig)
    names.append("msp_histograms.png")
    fig, (roc_ax, dist_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for run in runs:
        a = np.load(run["arrays"])
        label = f"{arm_name(run['config'])} s{run['config']['seed']}"
        if "msp_known" in a:
            fpr, tpr = roc_curve(a["msp_known"], a["msp_unknown"])
            roc_ax.plot(fpr, tpr, label=label)
        centres = (a["centre_edges"][1:] + a["centre_edges"][:-1]) / 2
        dist_ax.plot(centres, a["centre_hist"] / max(a["centre_hist"].sum(), 1), label=label)
    roc_ax.set(xlabel="false positive rate (unknown accepted)", ylabel="true positive rate (known kept)",
               title="open-set ROC of max softmax probability")
    dist_ax.set(xlabel="pairwise cosine distance between class centres", ylabel="share of pairs",
                title="class-centre sparsity")
    roc_ax.legend(fontsize=7)
    dist_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "roc_and_centres.png", dpi=100)
    plt.close(fig)
    names.append("roc_and_centres.png")
    return names


def _fmt(cell: tuple[float, float] | None, n: int) -> str:
    if cell is None:
        return "n/a"
    mean, std = cell
    return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"


def labeled_per_step(config: dict[str, Any], snapshot: dict[str, Any]) -> int:
    """Labeled faces in each batch: the loop gives unlabeled rows their share only when the split
    has faces, so a run trained before `wb split` sees more labeled faces per step."""
    uses_unlabeled = config["uir_loss"] != "none" or config["unlabeled_ratio"] > 0
    unlabeled = round(config["batch_size"] * config["unlabeled_ratio"]) if uses_unlabeled else 0
    return config["batch_size"] - (unlabeled if snapshot.get("unlabeled_faces") else 0)


def data_warnings(runs: list[dict[str, Any]]) -> list[str]:
    """Differences in what the runs trained on, which the metrics would otherwise hide."""
    warnings = []
    checks = {
        "labeled data (set, samples or held-out probes)": lambda r: (
            r["snapshot"].get("labeled_set"), r["snapshot"].get("labeled_digest"),
            tuple(r["snapshot"].get("holdout_sample_idx", []))),
        "unlabeled split": lambda r: (r["snapshot"].get("unlabeled_split"),
                                      r["snapshot"].get("unlabeled_digest")),
        "labeled faces per step": lambda r: labeled_per_step(r["config"], r["snapshot"]),
    }
    for what, key in checks.items():
        groups: dict[Any, list[str]] = {}
        for run in runs:
            groups.setdefault(key(run), []).append(run["run_id"])
        if len(groups) > 1:
            sides = "; ".join(", ".join(ids) for ids in groups.values())
            warnings.append(f"the runs differ in {what}: {sides}")
    return warnings


@dataclass
class CompareResult(Result):
    """`wb compare`: metrics by arm (mean, std over seeds), data warnings, and the HTML report."""

    report: str
    arms: list[dict[str, Any]]
    warnings: list[str]


def run_compare(workspace: Workspace, run_ids: list[str], out: Path | None = None) -> CompareResult:
    """`wb compare`: the evaluations of several runs side by side, with an HTML report.

    Returns `CompareResult`; warns (in the result) when the runs trained on different data."""
    if len(run_ids) < 2:
        raise WorkbenchError("give at least two runs to compare")
    runs = load_runs(workspace, run_ids)
    table = summarise(runs)
    out = out or workspace.root / "reports" / ("compare-" + "-".join(r[-6:] for r in run_ids))
    out.mkdir(parents=True, exist_ok=True)
    images = _plots(runs, out)
    header = "".join(f"<th>{html.escape(row['arm'])}<br><small>{len(row['runs'])} run(s)</small></th>"
                     for row in table)
    body = "".join(
        f"<tr><td>{html.escape(label)}</td>"
        + "".join(f"<td>{_fmt(row[label], len(row['runs']))}</td>" for row in table) + "</tr>"
        for label, _ in ROWS)
    configs = "".join(f"<h3>{html.escape(r['run_id'])}</h3>"
                      f"<pre>{html.escape(json.dumps(r['config'], indent=1))}</pre>" for r in runs)
    page = (f"<html><head><meta charset='utf-8'><title>UIR Workbench comparison</title></head><body>"
            f"<h1>Comparison of {len(runs)} runs</h1><table border=1 cellpadding=4><tr><th>metric</th>"
            f"{header}</tr>{body}</table>"
            + "".join(f"<p><img src='{name}'></p>" for name in images)
            + f"<h2>Run configs</h2>{configs}</body></html>")
    warnings = data_warnings(runs)
    if warnings:
        page = page.replace("</h1>", "</h1>" + "".join(f"<p><b>warning:</b> {html.escape(w)}</p>"
                                                       for w in warnings), 1)
    (out / "report.html").write_text(page)
    (out / "summary.json").write_text(json.dumps(table, indent=2))
    return CompareResult(str(out / "report.html"), table, warnings)
