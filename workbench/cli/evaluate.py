"""Evaluate: `wb eval`, `wb score` and `wb compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.options import JsonOpt, RayOpt, WorkspaceOpt, model_spec
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
from workbench.errors import WorkbenchError
from workbench.manifest.workspace import Workspace

app = typer.Typer()


@app.command("eval", rich_help_panel="Evaluate")
@handled
def eval_run(
    run_id: Annotated[str | None, typer.Argument(
        help="A training run id (or --model instead).", show_default=False)] = None,
    pairs: Annotated[Path | None, typer.Option(
        help="Verification pairs: an InsightFace .bin, or with --model also a pairs.txt protocol "
             "(LFW's) over --images.")] = None,
    model: Annotated[str | None, typer.Option(
        help="Evaluate this model instead of a run, on --pairs: dlib, onnx:PATH, insightface:DIR, "
             "ckpt:PATH or a named model (wb models list). Needs no workspace.")] = None,
    images: Annotated[Path | None, typer.Option(
        help="With a pairs.txt: the folder of NAME/NAME_000I.jpg photos; they are detected and "
             "aligned as ingest does.")] = None,
    detector: Annotated[str, typer.Option(
        help="With a pairs.txt: dlib, yunet[:PATH], scrfd:PATH or insightface:DIR.")] = "yunet",
    pairs_from: Annotated[str | None, typer.Option(
        help="Generate pairs from this labeled set.", show_default="the run's labeled set")] = None,
    flip: Annotated[bool, typer.Option(
        "--flip/--no-flip", help="Average each face's embedding with its mirror image's (the standard "
                                 "protocol; --no-flip halves the work).")] = True,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verification, open-set rejection (AUROC, FPR@95TPR, DIR@FPIR) and centre sparsity of a run;
    or, with --model, any model's verification accuracy on a standard protocol."""
    if (run_id is None) == (model is None):
        raise WorkbenchError("give a run id or --model (one of them)")
    if model is not None:
        _eval_model(model, pairs, images, detector, flip, as_json)
        return
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


def _eval_model(model: str, pairs: Path | None, images: Path | None, detector: str, flip: bool,
                as_json: bool) -> None:
    from workbench.evaluate.verify import verify_model
    from workbench.faces.detectors import DetectorSpec

    if pairs is None:
        raise WorkbenchError("--model needs --pairs (a .bin, or a pairs.txt with --images)")
    spec = model_spec(model, flip, None)
    det = None if pairs.suffix == ".bin" else DetectorSpec.parse(detector)
    with progress_bar("detect and align", enabled=not as_json) as update:
        result = verify_model(spec, pairs, images=images, detector=det, progress=update)
    report(f"eval {model}", result, as_json)


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
