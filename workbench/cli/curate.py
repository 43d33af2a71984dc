"""Curate: `wb embed`, `wb overlap`, `wb dedupe`, `wb split`, `wb calibrate`, `wb audit`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.options import (
    AmbiguousFpirOpt,
    CopiesOpt,
    CopyFpirOpt,
    FlipOpt,
    FpirOpt,
    JsonOpt,
    ModelNormOpt,
    ModelOpt,
    PerIdentityOpt,
    RayOpt,
    SeedOpt,
    VerboseOpt,
    WorkersOpt,
    WorkspaceOpt,
    model_spec,
    parse_threshold,
)
from workbench.cli.render import handled, kv_table, out, print_json, progress_bar, report
from workbench.errors import WorkbenchError
from workbench.faces.quality import MIN_QUALITY
from workbench.manifest.workspace import Workspace

app = typer.Typer()


@app.command(rich_help_panel="Curate")
@handled
def embed(
    model: ModelOpt = "dlib",
    flip: Annotated[bool, typer.Option(
        help="Average with the mirrored crop (2x the work, a little more accurate).")] = False,
    model_norm: ModelNormOpt = None,
    set_names: Annotated[list[str] | None, typer.Option(
        "--set", help="'unlabeled' or a labeled set name; repeat for several.",
        show_default="unlabeled")] = None,
    per_identity: Annotated[int, typer.Option(min=1, max=100_000,
        help="Labeled faces sampled per identity for its centre.")] = 10,
    seed: SeedOpt = 0,
    workers: Annotated[int | None, typer.Option(min=1, max=1024, help="Worker processes.",
                                                show_default="all cores")] = None,
    import_file: Annotated[Path | None, typer.Option(
        "--import", metavar="FILE", help="Parquet of vectors computed elsewhere: a 'vector' column and "
                                         "face_id, or set_name with sample_idx or locator.")] = None,
    model_name: Annotated[str | None, typer.Option(
        help="With --import: the name later commands use (--model imported:NAME).")] = None,
    export_file: Annotated[Path | None, typer.Option(
        "--export", metavar="FILE", help="Write the stored vectors of --model (and --set) as Parquet, "
                                         "keyed as --import reads them.")] = None,
    ray: RayOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compute missing embeddings (and labeled identity centres); re-runs reuse what exists.
    Or move vectors in and out: --import FILE --model-name NAME, --export FILE."""
    from workbench.embed.compute import run_embed

    if import_file is not None:
        from workbench.embed.transfer import run_import

        if not model_name:
            raise WorkbenchError("--import needs --model-name NAME (later: --model imported:NAME)")
        report("embed import", run_import(Workspace.at(workspace), import_file, model_name), as_json)
        return
    if export_file is not None:
        from workbench.embed.transfer import run_export

        report("embed export", run_export(Workspace.at(workspace), export_file,
                                          model_spec(model, flip, model_norm), set_names), as_json)
        return
    with progress_bar("embed", enabled=not as_json) as update:
        counts = run_embed(Workspace.at(workspace), model=model_spec(model, flip, model_norm), sets=set_names,
                           per_identity=per_identity, seed=seed, workers=workers, ray=ray, progress=update)
    report("embed", counts, as_json)


@app.command(rich_help_panel="Curate")
@handled
def overlap(
    labeled: Annotated[str, typer.Option("--labeled", help="The labeled set S to keep U apart from.")],
    threshold: Annotated[str, typer.Option(
        help="'auto' (calibrated for the model at --fpir) or a score.")] = "auto",
    fpir: FpirOpt = 0.01,
    ambiguous_fpir: AmbiguousFpirOpt = 0.02,
    copy_fpir: CopyFpirOpt = 0.001,
    copies: CopiesOpt = True,
    per_identity: PerIdentityOpt = 10,
    model: ModelOpt = "dlib",
    flip: FlipOpt = False,
    model_norm: ModelNormOpt = None,
    seed: SeedOpt = 0,
    workers: WorkersOpt = None,
    ray: RayOpt = None,
    workspace: WorkspaceOpt = None,
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Flag unlabeled faces whose identity is in the labeled set, or that copy a labeled photo.

    Thresholds are calibrated for the model on the labeled set (see `wb calibrate`);
    embeddings and calibrations are computed once and reused.
    """
    from workbench.curate.calibrate import OverlapTargets
    from workbench.curate.overlap import OverlapSettings, run_overlap

    targets = OverlapTargets(fpir=fpir, ambiguous_fpir=ambiguous_fpir, copy_fpir=copy_fpir, copies=copies,
                             per_identity=per_identity, seed=seed)
    settings = OverlapSettings(threshold=parse_threshold(threshold), targets=targets)
    with progress_bar("overlap: embeddings", enabled=not as_json) as update:
        summary = run_overlap(Workspace.at(workspace), labeled, model=model_spec(model, flip, model_norm),
                              settings=settings, workers=workers, ray=ray, progress=update)
    report(f"overlap with {labeled}", summary, as_json, verbose)


@app.command(rich_help_panel="Curate")
@handled
def dedupe(
    labeled: Annotated[str | None, typer.Option(
        help="Labeled set to calibrate the thresholds on.", show_default="the only one")] = None,
    recall: Annotated[float, typer.Option(
        min=0.5, max=0.9999, help="Share of web copies to find (calibration).")] = 0.99,
    merge_rate: Annotated[float, typer.Option(min=0.0001, max=0.5,
        help="Share of distinct photos of one person that may be merged (calibration).")] = 0.005,
    strict: Annotated[float | None, typer.Option(min=-1.0, max=1.0,
        help="Fixed: cosine at which two faces are duplicates.", show_default="calibrated")] = None,
    loose: Annotated[float | None, typer.Option(min=-1.0, max=1.0,
        help="Fixed: cosine above which close hashes also make a duplicate.",
        show_default="calibrated")] = None,
    phash_bits: Annotated[int | None, typer.Option(min=0, max=64,
        help="Fixed: max differing bits between the hashes: the nearest of the crops' and (faces of "
             "two images) the whole images', each also mirrored.", show_default="calibrated")] = None,
    context: Annotated[float | None, typer.Option(min=-1.0, max=1.0,
        help="Fixed: correlation of the photos around two faces, registered in the faces' frame, "
             "at which they are duplicates (finds reframed copies of small photos).",
        show_default="calibrated")] = None,
    model: ModelOpt = "dlib",
    flip: FlipOpt = False,
    model_norm: ModelNormOpt = None,
    workers: WorkersOpt = None,
    ray: RayOpt = None,
    workspace: WorkspaceOpt = None,
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Group near-duplicate unlabeled faces; the best-quality face represents each group.

    Thresholds are calibrated for the model on synthetic web copies of labeled photos
    (see `wb calibrate`) unless --strict/--loose/--phash-bits/--context fix them.
    """
    from workbench.curate.calibrate import DedupeTargets
    from workbench.curate.dedupe import run_dedupe
    from workbench.curate.pairs import DedupeThresholds

    fixed = None
    if (strict, loose, phash_bits, context) != (None, None, None, None):
        base = DedupeThresholds()
        fixed = DedupeThresholds(base.strict if strict is None else strict,
                                 base.loose if loose is None else loose,
                                 base.phash_bits if phash_bits is None else phash_bits,
                                 context=base.context if context is None else context)
    with progress_bar("dedupe: embeddings", enabled=not as_json) as update:
        summary = run_dedupe(Workspace.at(workspace), model=model_spec(model, flip, model_norm),
                             thresholds=fixed, labeled_set=labeled,
                             targets=DedupeTargets(recall=recall, merge_rate=merge_rate),
                             workers=workers, ray=ray, progress=update)
    report("dedupe", summary, as_json, verbose)


@app.command(rich_help_panel="Curate")
@handled
def split(
    eval_unknown: Annotated[float, typer.Option(min=0.0, max=0.99,
        help="Share of clean unlabeled faces held out, as whole clusters, for rejection tests.")] = 0.1,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed for choosing held-out clusters.")] = 0,
    min_quality: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Faces below this quality are excluded.")] = MIN_QUALITY,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the curated splits: train_unlabeled, eval_unknown and excluded (with reasons)."""
    from workbench.curate.splits import run_split

    summary = run_split(Workspace.at(workspace), eval_unknown=eval_unknown, seed=seed,
                        min_quality=min_quality)
    if as_json:
        print_json(summary)
        return
    out.print(kv_table("splits", list(summary.splits.items())))
    out.print(kv_table("excluded by reason", list(summary.excluded_by_reason.items())))


@app.command(rich_help_panel="Curate")
@handled
def calibrate(
    labeled: Annotated[str | None, typer.Option(
        "--labeled", help="Labeled set to measure on.", show_default="the only one")] = None,
    fpir: FpirOpt = 0.01,
    ambiguous_fpir: AmbiguousFpirOpt = 0.02,
    copy_fpir: CopyFpirOpt = 0.001,
    copies: CopiesOpt = True,
    recall: Annotated[float, typer.Option(
        min=0.5, max=0.9999, help="Dedupe: share of web copies to find.")] = 0.99,
    merge_rate: Annotated[float, typer.Option(min=0.0001, max=0.5,
        help="Dedupe: share of distinct photos of one person that may be merged.")] = 0.005,
    per_identity: PerIdentityOpt = 10,
    fresh: Annotated[bool, typer.Option("--fresh", help="Measure again even if stored.")] = False,
    model: ModelOpt = "dlib",
    flip: FlipOpt = False,
    model_norm: ModelNormOpt = None,
    seed: SeedOpt = 0,
    workers: WorkersOpt = None,
    ray: RayOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure overlap and dedupe thresholds for a model on a labeled set, with their error rates.

    Overlap: held-out labeled faces play unknown people (their identity removed from the
    gallery) and known people; the threshold flags --fpir of the unknown ones. Dedupe:
    synthetic web copies of the labeled photos against distinct photos of the same person.
    Stored in the manifest (view wb_calibrations); `wb overlap` and `wb dedupe` reuse it.
    """
    from workbench.curate.calibrate import DedupeTargets, OverlapTargets, run_calibrate

    overlap_targets = OverlapTargets(fpir=fpir, ambiguous_fpir=ambiguous_fpir, copy_fpir=copy_fpir,
                                     copies=copies, per_identity=per_identity, seed=seed)
    with progress_bar("calibrate: embeddings", enabled=not as_json) as update:
        summary = run_calibrate(Workspace.at(workspace), labeled, model=model_spec(model, flip, model_norm),
                                overlap=overlap_targets,
                                dedupe=DedupeTargets(recall=recall, merge_rate=merge_rate, seed=seed),
                                fresh=fresh, workers=workers, ray=ray, progress=update)
    report(f"calibration of {summary.model_key} on {summary.labeled_set}", summary, as_json)


audit_app = typer.Typer(help="Measure the curation steps on your own data.", no_args_is_help=True)


app.add_typer(audit_app, name="audit", rich_help_panel="Curate")


@audit_app.command("overlap")
@handled
def audit_overlap(
    labeled: Annotated[str, typer.Option("--labeled", help="The labeled set to audit against.")],
    threshold: Annotated[str, typer.Option(help="'auto' or a score, as for `wb overlap`.")] = "auto",
    fpir: FpirOpt = 0.01,
    plant_fraction: Annotated[float, typer.Option(
        min=0.01, max=1.0, help="Share of identities planted.")] = 0.2,
    hold_out: Annotated[float, typer.Option(
        min=0.01, max=0.99, help="Share of a planted identity's faces held out.")] = 0.3,
    per_identity: PerIdentityOpt = 10,
    model: ModelOpt = "dlib",
    flip: FlipOpt = False,
    seed: SeedOpt = 0,
    workers: WorkersOpt = None,
    ray: RayOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Plant held-out labeled faces among the queries; report recall and false-overlap rate."""
    from workbench.curate.audit import run_audit
    from workbench.curate.calibrate import OverlapTargets
    from workbench.curate.overlap import OverlapSettings

    settings = OverlapSettings(threshold=parse_threshold(threshold),
                               targets=OverlapTargets(fpir=fpir, per_identity=per_identity, seed=seed))
    with progress_bar("audit: embeddings", enabled=not as_json) as update:
        summary = run_audit(Workspace.at(workspace), labeled, model=model, flip=flip, settings=settings,
                            plant_fraction=plant_fraction, hold_out=hold_out, workers=workers, ray=ray,
                            progress=update)
    report(f"audit overlap with {labeled}", summary, as_json)


@audit_app.command("labeled")
@handled
def audit_labeled(
    name: Annotated[str, typer.Argument(help="The registered labeled set to audit.")],
    against: Annotated[list[str] | None, typer.Option(
        help="An evaluation set whose people must not be in NAME: a verification .bin, an identity "
             "folder tree or a registered set name; repeat for several.")] = None,
    precision: Annotated[float, typer.Option(min=0.5, max=0.9999,
        help="Estimated share of flagged faces that must really be wrongly labeled; sets the "
             "wrong-label threshold.")] = 0.9,
    same_recall: Annotated[float, typer.Option(min=0.5, max=0.9999,
        help="Share of one-person-two-labels pairs to find, measured on random halves of NAME's "
             "own identities; sets the same-person threshold.")] = 0.98,
    single_fpir: Annotated[float, typer.Option(min=1e-4, max=0.5,
        help="Labels with one photo: the share of them, when they are people of their own, that "
             "may still be reported as another label's person (as wb overlap --fpir); the report "
             "gives the recall this buys and the false findings to expect. Rates far below "
             "1 / (faces in the set) cannot be measured on it.")] = 0.01,
    model: ModelOpt = "dlib",
    flip: FlipOpt = False,
    model_norm: ModelNormOpt = None,
    seed: SeedOpt = 0,
    workers: WorkersOpt = None,
    ray: RayOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find wrong labels, one person under two labels, mixed identities, evaluation leakage and
    duplicate images in a labeled set; findings go to the view wb_labeled_findings.

    Every threshold is measured for the model on NAME itself and reported with its estimated
    error rates. Re-runs reuse the embeddings and replace the findings for the model.
    """
    from workbench.labeled_audit.run import run_audit_labeled

    with progress_bar("audit: embeddings", enabled=not as_json) as update:
        result = run_audit_labeled(Workspace.at(workspace), name, model=model_spec(model, flip, model_norm),
                                   against=against, precision=precision, same_recall=same_recall,
                                   single_fpir=single_fpir, seed=seed, workers=workers, ray=ray,
                                   progress=update)
    report(f"audit of labeled set {name}", result, as_json)
