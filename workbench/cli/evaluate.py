"""Evaluate: `wb eval`, `wb score` and `wb compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.options import JsonOpt, RayOpt, WorkspaceOpt
from workbench.cli.render import (
    comparison_table,
    err,
    handled,
    kv_table,
    out,
    print_json,
    progress_bar,
    report,
)
from workbench.manifest.workspace import Workspace

app = typer.Typer()


@app.command("eval", rich_help_panel="Evaluate")
@handled
def eval_run(
    run_id: Annotated[str, typer.Argument(help="A training run id.")],
    pairs: Annotated[Path | None, typer.Option(help="InsightFace verification .bin file.")] = None,
    pairs_from: Annotated[str | None, typer.Option(
        help="Generate pairs from this labeled set.", show_default="the run's labeled set")] = None,
    flip: Annotated[bool, typer.Option(
        "--flip/--no-flip", help="Average each face's embedding with its mirror image's (the standard "
                                 "protocol; --no-flip halves the work).")] = True,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verification, open-set rejection (AUROC, FPR@95TPR, DIR@FPIR) and centre sparsity."""
    from workbench.evaluate.evaluate import run_eval

    results = run_eval(Workspace.at(workspace), run_id, pairs_file=pairs, pairs_from=pairs_from, flip=flip)
    if as_json:
        print_json(results)
        return
    for section in ("verification", "open_set", "centre_distance"):
        flat = [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in getattr(results, section).items()
                if not isinstance(v, dict)]
        flat += [(f"{k} mean", f"{v['mean']:.4f}") for k, v in getattr(results, section).items()
                 if isinstance(v, dict) and "mean" in v]
        out.print(kv_table(f"{section} ({run_id})", flat))


@app.command(rich_help_panel="Evaluate")
@handled
def score(
    run_id: Annotated[str, typer.Argument(help="A training run id.")],
    set_names: Annotated[str, typer.Option(
        "--set", help="Comma-separated: 'unlabeled' (every face) or split names.")] = "unlabeled",
    ray: RayOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write per-face max probability, predicted identity and entropy to wb_scores."""
    from workbench.evaluate.score import run_score

    with progress_bar("score", enabled=not as_json) as update:
        summary = run_score(Workspace.at(workspace), run_id, [s.strip() for s in set_names.split(",")],
                            progress=update, ray=ray)
    report(f"score {run_id}", summary, as_json)


@app.command(rich_help_panel="Evaluate")
@handled
def compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more evaluated runs.")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Report folder.")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Side-by-side table and an HTML report (MSP histograms, ROC, centre distances, configs)."""
    from workbench.evaluate.compare import run_compare

    result = run_compare(Workspace.at(workspace), run_ids, out_dir)
    if as_json:
        print_json(result)
        return
    out.print(comparison_table(result))
    out.print(f"report: {result.report}")
    for warning in result.warnings:
        err.print(f"warning: {warning}", highlight=False)
