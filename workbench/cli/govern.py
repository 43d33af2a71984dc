"""Govern: `wb export`, `wb forget` and `wb card`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.options import JsonOpt, WorkspaceOpt
from workbench.cli.render import handled, kv_table, out, print_json, report
from workbench.errors import WorkbenchError
from workbench.manifest.workspace import Workspace

app = typer.Typer()


@app.command(rich_help_panel="Govern")
@handled
def export(
    split_name: Annotated[str, typer.Option("--split", help="Split to export, e.g. train_unlabeled.")],
    fmt: Annotated[str, typer.Option("--format", help="rec (InsightFace) | folder | hf.")],
    out_dir: Annotated[Path, typer.Option("--out", help="New, empty output folder.")],
    labels: Annotated[str, typer.Option(help="none (one label) or clusters (pseudo-identities).")
                      ] = "none",
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a split of aligned faces with a manifest.csv beside it; recorded in wb_exports."""
    from workbench.governance.export import run_export

    summary = run_export(Workspace.at(workspace), split_name, fmt, out_dir, labels)
    report("export", summary, as_json)


@app.command(rich_help_panel="Govern")
@handled
def forget(
    identity: Annotated[str | None, typer.Option(help="A labeled identity (and faces matched to it).")
                        ] = None,
    source: Annotated[str | None, typer.Option(help="Every image of an ingest source.")] = None,
    image: Annotated[str | None, typer.Option(help="One image by its sha256.")] = None,
    url: Annotated[str | None, typer.Option(help="A crawled URL and the image it gave.")] = None,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the tombstone).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would go; change nothing.")
                       ] = False,
    compact: Annotated[bool, typer.Option(
        "--compact/--no-compact", help="Rewrite the manifest now so no byte of the erased rows stays in "
        "it; --no-compact leaves that to `wb compact`, once for many requests (the rewrite grows with "
        "the manifest).")] = True,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Erase every trace of a person, source, image or URL; keep a non-identifying tombstone."""
    from workbench.governance.forget import run_forget

    if sum(v is not None for v in (identity, source, image, url)) != 1:
        raise WorkbenchError("give exactly one of --identity, --source, --image, --url")
    summary = run_forget(Workspace.at(workspace), identity=identity, source=source, image=image,
                         url=url, reason=reason, dry_run=dry_run, compact=compact)
    if as_json:
        print_json(summary)
        return
    out.print(kv_table("would erase" if dry_run else "erased",
                       [(k, v) for k, v in summary.as_dict().items() if k != "stale_exports"]))
    for export_row in summary.stale_exports:
        out.print(f"stale export {export_row['export_id']}: {export_row['out']} (delete or re-export)")


@app.command(rich_help_panel="Govern")
@handled
def compact(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Rewrite the manifest into a fresh file: erased rows (wb forget --no-compact) leave no bytes."""
    from workbench.governance.compaction import run_compact

    report("compact", run_compact(Workspace.at(workspace)), as_json)


@app.command(rich_help_panel="Govern")
@handled
def card(
    path: Annotated[Path | None, typer.Option(help="Data card file.", show_default="DIR/DATA_CARD.md")
                    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Regenerate the generated section of the data card; hand-written text is left alone."""
    from workbench.governance.card import write_card

    result = write_card(Workspace.at(workspace), path)
    if as_json:
        print_json(result)
    else:
        out.print(f"{'updated' if result.changed else 'unchanged'}: {result.path}")
