"""Start here: `wb demo` (the whole loop on generated faces) and `wb status`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.cli.options import JsonOpt, WorkspaceOpt
from workbench.cli.render import (
    comparison_table,
    err,
    handled,
    kv_table,
    out,
    print_json,
    rows_table,
    serve_app,
    warn,
)
from workbench.manifest.workspace import Workspace

app = typer.Typer()


@app.command(rich_help_panel="Start here")
@handled
def demo(
    workspace: Annotated[Path, typer.Option(
        "--workspace", "-w", help="Demo workspace (created; generated data goes to DIR/demo-data).")
    ] = Path("wb-demo"),
    launch: Annotated[bool, typer.Option("--launch/--no-launch", help="Open the FiftyOne App at the end.")
                      ] = True,
    steps: Annotated[int, typer.Option(
        min=1, max=1_000_000,
        help="Training steps of each of the three runs (the curating model, the baseline, UIR).")] = 150,
    port: Annotated[int, typer.Option(min=1, max=65535, help="App port.")] = 5151,
    as_json: JsonOpt = False,
) -> None:
    """The whole loop on generated faces, in a few minutes on a laptop CPU.

    Generates a labeled set as RecordIO and a web folder with planted overlaps, near-duplicates
    and junk; runs ingest, labeled add, overlap, dedupe, split, a baseline and a UIR training run,
    eval, score, compare and browse; prints curation precision and recall against the planted
    truth and the UIR vs baseline table. Rerunning reuses what is done.
    """
    from workbench.demo.run import DemoSettings, run_demo

    settings = DemoSettings(steps=steps)
    result = run_demo(workspace, settings, say=(lambda _: None) if as_json else
                      (lambda text: err.print(f"[dim]wb demo:[/dim] {text}", highlight=False)))
    if as_json:
        print_json(result)
        return
    print_demo(result.as_dict())
    if launch and result.browse:
        serve_app(result.browse["dataset"], address="127.0.0.1", port=port,
                  hint="saved views: " + ", ".join(result.browse["saved_views"]))


def print_demo(result: dict[str, Any]) -> None:
    cur = result["curation"]
    timings = [(s["step"], f"{s['seconds']:.1f} s") for s in result["steps"]]
    out.print(kv_table("what the demo did", [*timings, ("total", f"{result['seconds']:.0f} s")]))
    out.print(kv_table("collected", [
        ("faces by source", ", ".join(f"{k} {v}" for k, v in cur["faces_by_source"].items())),
        ("rejected (planted junk)", f"{cur['junk_rejected']['rejected']} of "
                                    f"{cur['junk_rejected']['planted']}: "
                                    + ", ".join(cur["junk_rejected"]["reasons"])),
        ("scenes with a detected face", f"{cur['scenes_with_face']['faces_found']} of "
                                        f"{cur['scenes_with_face']['pictures']}"),
        ("labeled set", f"{result['labeled']['identities']} identities, "
                        f"{result['labeled']['images']} images"),
    ]))
    ov, wide, dup = cur["overlap"], cur["overlap_or_ambiguous"], cur["near_duplicates"]
    out.print(kv_table("curation against the planted truth", [
        ("overlap: planted photos of known people", ov["planted"]),
        ("overlap: flagged copy or overlap / with ambiguous too", f"{ov['flagged']} / {wide['flagged']}"),
        ("overlap precision / recall", f"{ov['precision']:.3f} / {ov['recall']:.3f}"),
        ("overlap or ambiguous (both excluded): precision / recall",
         f"{wide['precision']:.3f} / {wide['recall']:.3f}"),
        ("near-duplicates: planted pairs found", f"{dup['found']} of {dup['planted']}"),
        ("near-duplicates precision / recall (pairs)", f"{dup['precision']:.3f} / {dup['recall']:.3f}"),
        ("splits", ", ".join(f"{k} {v}" for k, v in sorted(result["split"]["splits"].items()))),
    ]))
    out.print(comparison_table(result["comparison"]))
    out.print(f"report: {result['comparison']['report']}")
    out.print(f"workspace: {result['workspace']}  (try: wb status -w {result['workspace']})", highlight=False)


@app.command(rich_help_panel="Workspace")
@handled
def status(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Counts by source, status and rejection reason, faces, and the last runs."""
    from workbench.governance.compaction import pending
    from workbench.manifest.status import workspace_status

    ws = Workspace.at(workspace)
    with ws.connect(read_only=True) as con:
        info, owed = workspace_status(con), pending(con)
    if owed:
        warn([f"{owed} erasure(s) are gone from every table but may still have bytes in the manifest "
              "file (wb forget --no-compact): run wb compact"])
    if as_json:
        print_json(info)
        return
    out.print(kv_table(f"workspace {ws.root}", [
        ("files", info.files), ("images", info.images), ("faces", info.faces)]))
    out.print(rows_table("by source", info.by_source))
    out.print(rows_table("rejected by reason", info.rejected_by_reason))
    for key in ("labeled_sets", "overlap", "splits", "reviews", "browse", "train_runs"):
        if getattr(info, key):
            out.print(rows_table(key.replace("_", " "), getattr(info, key)))
    runs = [{k: r[k] for k in ("run_id", "command", "status", "started_at", "ended_at")}
            for r in info.last_runs]
    out.print(rows_table("last runs", runs))


models_app = typer.Typer(help="Named models: what the registry offers, what is here, and pulling one "
                              "(nothing is ever downloaded otherwise).", no_args_is_help=True)
app.add_typer(models_app, name="models", rich_help_panel="Start here")


@models_app.command("list")
@handled
def models_list(as_json: JsonOpt = False) -> None:
    """The registry: name, task, size, license, source, and whether the model is here."""
    from workbench.zoo import listing

    rows = listing()
    if as_json:
        print_json(rows)
        return
    out.print(rows_table("models (use a name wherever --model or --detector takes one)",
                         [vars(r) for r in rows]))


@models_app.command("pull")
@handled
def models_pull(
    name: Annotated[str, typer.Argument(help="A name from `wb models list`.")],
    accept_license: Annotated[bool, typer.Option(
        "--accept-license", help="Accept a restrictive license (InsightFace packs: non-commercial "
                                 "research only) after reading it.")] = False,
    mirror: Annotated[str | None, typer.Option(
        envvar="WB_MODELS_MIRROR", help="Fetch the same file names from this base URL (a team mirror).")
                      ] = None,
) -> None:
    """Download a named model into the cache ($WB_MODELS_CACHE): resumable, checked by SHA-256,
    renamed into place only when whole."""
    from workbench.cli.render import progress_bar
    from workbench.zoo import pull

    with progress_bar(f"pull {name}", enabled=True) as bar:
        path = pull(name, accept_license=accept_license, mirror=mirror, progress=bar)
    out.print(f"{name}: {path}")
