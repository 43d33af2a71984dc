"""Browse: `wb browse` (FiftyOne App) and `wb review pull`."""

from __future__ import annotations

from typing import Annotated

import typer

from workbench.browse.fields import where_help
from workbench.cli.options import DatasetOpt, JsonOpt, WorkspaceOpt
from workbench.cli.render import handled, progress_bar, report, serve_app
from workbench.manifest.workspace import Workspace

app = typer.Typer()


@app.command(rich_help_panel="Browse")
@handled
def browse(
    dataset: DatasetOpt = None,
    where: Annotated[str | None, typer.Option(
        help=where_help(),
        show_default="all faces")] = None,
    run: Annotated[str | None, typer.Option(
        "--run", help="Training run whose rejection scores to show.", show_default="latest scored run")
    ] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="App port.")] = 5151,
    address: Annotated[str, typer.Option(help="Address the App binds to; 0.0.0.0 shares it on the network.")
                       ] = "127.0.0.1",
    launch: Annotated[bool, typer.Option("--launch/--no-launch", help="Start the App after syncing.")
                      ] = True,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Embeddings map from stored vectors (PCA).")
                    ] = True,
    labeled: Annotated[str | None, typer.Option(
        help="Show this labeled set's audit findings (`wb audit labeled`) instead of the unlabeled "
             "faces: the faces with findings and a few of each involved identity's others.")] = None,
    everything: Annotated[bool, typer.Option(
        "--all", help="With --labeled: every face of the set, not only those around findings.")] = False,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Mirror the manifest into FiftyOne (one sample per face crop) and open the App.

    Fields: source, original path, split and exclusion reason, quality, duplicate group, the
    nearest labeled identity (`overlap`, similarity as confidence) and its decision, rejection
    scores (`predicted`, `max_prob`, `entropy`). Saved views: overlaps-to-review, duplicates,
    hardest-unknowns, low-quality. Re-syncs update in place, pull reviewers' tags first, and
    never duplicate samples. Tags `not_face`, `wrong_identity`, `overlap`, `duplicate`, `keep`
    come back with `wb review pull` and change `wb split`.

    With --labeled NAME: a dataset of the set's faces with their findings (`findings`,
    `wrong_label_score`, `likely_identity`, `same_person_as`, `second_person`, `leaked_from`,
    `duplicate_of`) and saved views wrong-labels, same-person-pairs, mixed-identities, leakage,
    duplicates. Tags `keep`, `wrong_label`, `same_person` come back with `wb review pull
    --dataset` and steer `wb labeled clean`.
    """
    if labeled is not None:
        from workbench.browse.labeled import run_labeled_sync

        with progress_bar("browse: new samples", enabled=not as_json) as update:
            result = run_labeled_sync(Workspace.at(workspace), labeled, dataset_name=dataset,
                                      everything=everything, progress=update)
        report(f"browse {labeled}", result, as_json)
        if launch:
            serve_app(result.dataset, address=address, port=port)
        return
    from workbench.browse.sync import run_browse_sync

    with progress_bar("browse: new samples", enabled=not as_json) as update:
        summary = run_browse_sync(Workspace.at(workspace), dataset_name=dataset, where=where,
                                  score_run=run, plot=plot, progress=update)
    report("browse", summary, as_json)
    if launch:
        serve_app(summary.dataset, address=address, port=port)


review_app = typer.Typer(help="Reviewers' tags from the FiftyOne App.", no_args_is_help=True)


app.add_typer(review_app, name="review", rich_help_panel="Browse")


@review_app.command("pull")
@handled
def review_pull(dataset: DatasetOpt = None, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Bring the App's review tags into the manifest (`wb_reviews`); `wb split` then honours them."""
    from workbench.browse.sync import run_review_pull

    report("review pull", run_review_pull(Workspace.at(workspace), dataset_name=dataset), as_json)
