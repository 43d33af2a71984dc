"""Collect: `wb ingest`, `wb crawl` and `wb labeled` (register labeled sets)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from workbench.cli.options import DetectorOpt, JsonOpt, RayOpt, WorkspaceOpt
from workbench.cli.render import (
    err,
    handled,
    kv_table,
    out,
    print_json,
    progress_bar,
    report,
    rows_table,
    warn,
)
from workbench.manifest.workspace import Workspace

if TYPE_CHECKING:
    from workbench.labeled.register import LabeledSetSummary

app = typer.Typer()


@app.command(rich_help_panel="Collect")
@handled
def ingest(
    path: Annotated[str, typer.Argument(
        help="Folder (walked recursively), single image, or a filesystem URI pyarrow reads "
             "(file://, s3://, gs://, hdfs://), recorded as given.")],
    source: Annotated[str | None, typer.Option(
        help="Name of where the images came from.", show_default="folder name")] = None,
    aligned: Annotated[bool, typer.Option(
        "--aligned", help="Inputs are aligned 112x112 crops: no detection, one face each.",
    )] = False,
    workers: Annotated[int | None, typer.Option(min=1, max=1024,
        help="Worker processes.", show_default="all cores")] = None,
    detector: DetectorOpt = None,
    det_threshold: Annotated[float | None, typer.Option(min=0.0, max=1.0,
        help="Detector score threshold; lower finds more faces and more false ones.",
        show_default="dlib 0.0, YuNet 0.7, SCRFD 0.5")] = None,
    upsample: Annotated[int, typer.Option(min=0, max=3,
        help="dlib only: upsample before detection (finds faces under ~80 px, 4x slower per step).")] = 0,
    chunk_size: Annotated[int, typer.Option(min=1, max=1_000_000,
        help="Images per transaction: a crash redoes at most this many.")] = 512,
    ray: RayOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate, hash, detect and align every image under PATH into the manifest.

    Re-running adds only new or changed files; a killed run resumes where it stopped.
    """
    from workbench.ingest.pipeline import run_ingest

    with progress_bar("ingest", enabled=not as_json) as update:
        summary = run_ingest(Workspace.at(workspace), path, source=source, aligned=aligned, workers=workers,
                             ray=ray, detector=detector, det_threshold=det_threshold, upsample=upsample,
                             chunk_size=chunk_size, progress=update)
    if as_json:
        print_json(summary)
        return
    rows: list[tuple[str, Any]] = [
        ("source", summary.source), ("files seen", summary.files_seen),
        ("already ingested", summary.already_ingested), ("new images", summary.new_images),
        ("exact duplicates", summary.exact_duplicates), ("faces", summary.faces),
    ]
    rows += [(f"rejected: {reason}", n) for reason, n in summary.rejected.most_common()]
    if summary.skipped_other:
        rows.append(("skipped (not image files)", summary.skipped_other))
    out.print(kv_table(f"ingest {summary.run_id}", rows))
    for hint in summary.hints:
        err.print(f"hint: {hint}", highlight=False)


@app.command(rich_help_panel="Collect")
@handled
def crawl(
    urls_file: Annotated[Path | None, typer.Argument(help="File of image or page URLs, one a line.")] = None,
    seed: Annotated[list[str] | None, typer.Option(help="Seed page URL; repeat for several.")] = None,
    depth: Annotated[int, typer.Option(min=0, max=100, help="Link depth followed from seed pages.")] = 1,
    out_dir: Annotated[Path, typer.Option("--out", help="Where images are stored as <sha256>.<ext>.")
                       ] = Path("webfaces"),
    allow_host: Annotated[list[str] | None, typer.Option(help="Also follow links to this host.")] = None,
    allow_private: Annotated[bool, typer.Option(
        "--allow-private", help="Allow loopback and private addresses (a local test server); "
                                "refused by default, redirects included.")] = False,
    rate: Annotated[float, typer.Option(min=0.001, max=1000.0, help="Requests per second per host.")] = 1.0,
    per_host: Annotated[int, typer.Option(min=1, max=1000, help="Requests in flight per host.")] = 2,
    max_bytes: Annotated[int, typer.Option(
        min=1, max=2**40, help="Byte cap per file, enforced while streaming.")
                         ] = 20 * 2**20,
    retries: Annotated[int, typer.Option(min=0, max=100, help="Retries on 429, 5xx and timeouts.")] = 3,
    timeout: Annotated[float, typer.Option(
        min=0.1, max=3600.0, help="Read timeout in seconds (between two reads).")] = 15.0,
    response_timeout: Annotated[float, typer.Option(
        min=1.0, max=86_400.0, help="Seconds a whole response may take, headers to last byte.")] = 120.0,
    min_rate: Annotated[float, typer.Option(
        min=0.0, max=1e9, help="Bytes/s a download must keep up after its first 5 s.")] = 4096.0,
    max_pages: Annotated[int | None, typer.Option(
        min=0, max=10**12, help="Stop after this many pages.")] = None,
    max_images: Annotated[int | None, typer.Option(
        min=0, max=10**12, help="Stop after this many images.")] = None,
    time_limit: Annotated[float | None, typer.Option(
        min=0.0, max=1e9, help="Stop after this many seconds.")] = None,
    contact: Annotated[str, typer.Option(help="Contact put in the User-Agent.")
                       ] = "https://github.com/uir-workbench",
    then_ingest: Annotated[bool, typer.Option("--ingest", help="Run `wb ingest` on what was fetched.")
                           ] = False,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Collect images politely (robots.txt, rate limits, retries), with provenance per URL."""
    from workbench.crawl.crawler import CrawlSettings, run_crawl

    out_path = out_dir if out_dir.is_absolute() else Path.cwd() / out_dir
    settings = CrawlSettings(out=out_path, depth=depth, allow_hosts=tuple(allow_host or ()), rate=rate,
                             allow_private=allow_private,
                             per_host=per_host, max_bytes=max_bytes, retries=retries,
                             read_timeout=timeout, response_timeout=response_timeout, min_rate=min_rate,
                             max_pages=max_pages, max_images=max_images,
                             time_limit=time_limit, contact=contact)
    with progress_bar("crawl", enabled=not as_json) as bar:
        summary = run_crawl(Workspace.at(workspace), urls_file=urls_file, seeds=list(seed or []),
                            settings=settings, then_ingest=then_ingest,
                            progress=lambda counts: bar.note(", ".join(f"{k} {v}"
                                                                       for k, v in counts.items())))
    if as_json:
        print_json(summary)
    else:
        out.print(kv_table("crawl", [(k, v) for k, v in summary.as_dict().items()
                                     if k not in ("ingest", "not_fetched")]))
        for why, n in summary.not_fetched.items():
            out.print(f"not fetched: {n} x {why}", highlight=False)


labeled_app = typer.Typer(help="Register and inspect labeled sets (S), referred to by name later.",
                          no_args_is_help=True)


app.add_typer(labeled_app, name="labeled", rich_help_panel="Collect")


def print_set(summary: LabeledSetSummary) -> None:
    rows: list[tuple[str, Any]] = [
        ("path", summary.path), ("format", summary.format), ("aligned", summary.aligned),
        ("identities", summary.identities), ("images", summary.images),
        ("detector", summary.detector or "none (aligned crops)"), ("registration", summary.registration),
    ]
    rows += [(f"rejected: {reason}", n) for reason, n in summary.rejected.items()]
    if summary.empty_identities:
        examples = ", ".join(summary.empty_identity_examples[:3])
        rows.append(("identities without images", f"{summary.empty_identities} ({examples})"))
    if summary.replaced:
        rows.append(("replaced", ", ".join(f"{n} {table}" for table, n in summary.replaced.items())))
    out.print(kv_table(f"labeled set {summary.name}", rows))
    for note in summary.notes:
        out.print(f"[yellow]note:[/] {note}")
    warn(summary.warnings)


@labeled_app.command("add")
@handled
def labeled_add(
    name: Annotated[str, typer.Argument(help="Name later commands use, e.g. ms1mv2.")],
    path: Annotated[Path, typer.Argument(
        help="train.rec folder (InsightFace), <identity>/<image> folder, or HF dataset.")],
    fmt: Annotated[str, typer.Option(
        "--format", help="auto | rec | folder | hf (auto looks at the files).")] = "auto",
    aligned: Annotated[bool | None, typer.Option(
        "--aligned/--unaligned",
        help="Images are aligned 112x112 crops. Default: aligned for rec, unaligned otherwise "
             "(unaligned sets are detected and aligned like ingest).",
        show_default=False)] = None,
    image_column: Annotated[str, typer.Option(help="HF image column.")] = "image",
    label_column: Annotated[str, typer.Option(help="HF label column.")] = "label",
    workers: Annotated[int | None, typer.Option(min=1, max=1024,
        help="Worker processes for detection.", show_default="all cores")] = None,
    detector: DetectorOpt = None,
    outside_paths: Annotated[bool, typer.Option(
        "--allow-outside-paths", help="HF datasets: read images given by a path outside the dataset's "
                                      "folder (refused by default: a crafted dataset could name any file).")
                             ] = False,
    replace: Annotated[bool, typer.Option(
        "--replace", help="If NAME is registered with other contents, remove that registration and "
                          "everything derived from it (vectors, centres, overlap, findings) first.")] = False,
    ray: RayOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a labeled set: its identity list and sample index, not its pixels."""
    from workbench.governance.registrations import run_labeled_add

    with progress_bar(f"labeled add {name}", enabled=not as_json) as update:
        summary = run_labeled_add(Workspace.at(workspace), name, path, fmt=fmt, aligned=aligned,
                                  image_column=image_column, label_column=label_column,
                                  workers=workers, ray=ray, detector=detector, progress=update,
                                  replace=replace, outside_paths=outside_paths)
    if as_json:
        print_json(summary)
    else:
        print_set(summary)
        if summary.already_registered:
            out.print(f"{name} was already registered from this path: nothing changed")


@labeled_app.command("list")
@handled
def labeled_list(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """The registered labeled sets."""
    from workbench.labeled.register import list_sets

    with Workspace.at(workspace).connect(read_only=True) as con:
        sets = list_sets(con)
    if as_json:
        print_json(sets)
        return
    out.print(rows_table("labeled sets", [
        {k: getattr(s, k) or "-" for k in ("name", "format", "identities", "images", "detector", "path")}
        for s in sets]))


@labeled_app.command("remove")
@handled
def labeled_remove(
    name: Annotated[str, typer.Argument(help="The set to forget.")],
    workspace: WorkspaceOpt = None,
) -> None:
    """Forget a labeled set's registration and everything derived from it (vectors, centres,
    calibrations, overlap rows, findings, reviews, App datasets); its files are not touched."""
    from workbench.governance.registrations import run_labeled_remove

    summary = run_labeled_remove(Workspace.at(workspace), name)
    derived = ", ".join(f"{n} {t}" for t, n in summary.removed_rows.items()
                        if t not in ("labeled_samples", "labeled_identities"))
    out.print(f"removed labeled set {name} ({summary.identities} identities, "
              f"{summary.images} images){'; with ' + derived if derived else ''}")


@labeled_app.command("pairs")
@handled
def labeled_pairs(
    name: Annotated[str, typer.Argument(help="A registered labeled set.")],
    out_file: Annotated[Path, typer.Option("--out", help="The .bin file to write.")],
    folds: Annotated[int, typer.Option(min=2, max=1000, help="Folds with disjoint identities.")] = 10,
    pairs_per_fold: Annotated[int, typer.Option(
        min=2, max=10_000_000, help="Pairs per fold, half same.")] = 600,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Random seed.")] = 0,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write LFW-style verification pairs from a labeled set as an InsightFace .bin."""
    from workbench.labeled.pairs import write_pairs

    counts = write_pairs(Workspace.at(workspace), name, out_file, n_folds=folds,
                         pairs_per_fold=pairs_per_fold, seed=seed)
    if as_json:
        print_json(counts)
    else:
        out.print(f"wrote {counts.pairs} pairs ({counts.same} same, "
                  f"{counts.different} different) to {out_file}")


@labeled_app.command("clean")
@handled
def labeled_clean(
    name: Annotated[str, typer.Argument(help="An audited labeled set (`wb audit labeled NAME`).")],
    out_dir: Annotated[Path, typer.Option("--out", help="A new (or empty) folder for the cleaned copy.")],
    fmt: Annotated[str, typer.Option("--format", help="rec (InsightFace RecordIO), folder or hf.")] = "rec",
    drop: Annotated[str, typer.Option(
        help="Finding kinds whose faces are left out, comma-separated: wrong_label, duplicate, "
             "leakage, mixed_identity.")] = "wrong_label,duplicate,leakage",
    merge: Annotated[str, typer.Option(
        help="'same_person': merge every label pair the audit found to be one person (reviewers' "
             "`same_person` tags merge theirs regardless).")] = "",
    new_name: Annotated[str | None, typer.Option(
        "--name", help="Name to register the copy under.", show_default="NAME-clean")] = None,
    model_key: Annotated[str | None, typer.Option(
        help="Use the audit made with this model key.", show_default="the newest audit")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a cleaned copy of a labeled set and register it; the source is never modified.

    Beside the images: labels.csv (old label -> new label), dropped.csv (each dropped face and
    why) and lineage.json (source, model, audit run, reviews), also kept with the registration.
    Reviewers' tags on the set's faces count: `keep` protects a face, `wrong_label` drops it.
    """
    from workbench.labeled_audit.clean import run_clean

    result = run_clean(Workspace.at(workspace), name, out_dir, fmt=fmt, drop=drop, merge=merge,
                       new_name=new_name, model_key=model_key)
    report(f"cleaned copy of {name}", result, as_json)
