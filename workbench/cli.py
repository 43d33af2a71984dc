"""The `wb` command: parses arguments, calls library functions, prints results."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from workbench.errors import WorkbenchError
from workbench.faces.quality import MIN_QUALITY
from workbench.manifest.query import one
from workbench.manifest.workspace import ENV_VAR, Workspace

if TYPE_CHECKING:
    from workbench.embed.models import ModelSpec

app = typer.Typer(
    name="wb",
    help="UIR Workbench: curate labeled and unlabeled faces for open-set face recognition.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
out = Console()
err = Console(stderr=True)

WorkspaceOpt = Annotated[
    Path | None,
    typer.Option(
        "--workspace", "-w", envvar=ENV_VAR, show_default="current directory",
        help="Workspace directory; the manifest is DIR/manifests/wb.duckdb.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")]
ModelOpt = Annotated[str, typer.Option(
    help="Embedding model: dlib (packaged, 128-d), onnx:PATH (an InsightFace-style 112x112 "
         "recogniser, e.g. your ArcFace r100 export), insightface:DIR (a model pack's recogniser) "
         "or ckpt:PATH (a wb train checkpoint).")]
ModelNormOpt = Annotated[str | None, typer.Option(
    help="ONNX input scaling MEAN,STD, e.g. 127.5,127.5.",
    show_default="the model's metadata, else InsightFace's")]
DetectorOpt = Annotated[str, typer.Option(
    help="Face detector: dlib (HOG, packaged), yunet[:PATH] (small faces; PATH or $WB_YUNET_MODEL), "
         "scrfd:PATH (InsightFace's) or insightface:DIR (a model pack's det_*.onnx).")]

F = TypeVar("F", bound=Callable[..., Any])


def handled(fn: F) -> F:
    """One-line errors instead of tracebacks; Ctrl-C keeps committed work."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except WorkbenchError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted: committed work is kept; run the same command to resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


class RateColumn(ProgressColumn):
    """Items per second, the figure people watch on long runs."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f}/s", style="cyan")


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr, driven by `update(done, total)` callbacks."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               RateColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, disable=not (enabled and err.is_terminal)) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in rows:
        table.add_row(key, str(value))
    return table


def report(title: str, summary: dict[str, Any], as_json: bool) -> None:
    """A command's summary: JSON on stdout for scripts, a key/value table for people."""
    if as_json:
        print_json(summary)
        return
    out.print(kv_table(title, [(k, f"{v:.4g}" if isinstance(v, float) else v)
                               for k, v in flatten(summary).items()]))


def flatten(summary: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested summaries (a calibration inside an overlap run) as dotted keys, rounded pairs."""
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list | tuple) and all(isinstance(v, float) for v in value):
            flat[prefix + key] = ", ".join(f"{v:.4g}" for v in value)
        else:
            flat[prefix + key] = value
    return flat


def model_spec(model: str, flip: bool, norm: str | None) -> ModelSpec:
    """The --model, --flip and --model-norm options as one spec (imported late: startup stays fast)."""
    from workbench.embed.models import ModelSpec

    return ModelSpec.parse(model, flip=flip, norm=norm)


def parse_threshold(text: str) -> float | None:
    """'auto' (None) or a number, with a one-line error otherwise."""
    if text == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise WorkbenchError(f"--threshold must be 'auto' or a number, not {text!r}") from None


def rows_table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for name in rows[0] if rows else ["(none)"]:
        table.add_column(name)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    return table


@app.command(rich_help_panel="Start here")
@handled
def demo(
    workspace: Annotated[Path, typer.Option(
        "--workspace", "-w", help="Demo workspace (created; generated data goes to DIR/demo-data).")
    ] = Path("wb-demo"),
    launch: Annotated[bool, typer.Option("--launch/--no-launch", help="Open the FiftyOne App at the end.")
                      ] = True,
    steps: Annotated[int, typer.Option(help="Training steps of each of the two runs.")] = 150,
    port: Annotated[int, typer.Option(help="App port.")] = 5151,
    as_json: JsonOpt = False,
) -> None:
    """The whole loop on generated faces, in a few minutes on a laptop CPU.

    Generates a labeled set as RecordIO and a web folder with planted overlaps, near-duplicates
    and junk; runs ingest, labeled add, overlap, dedupe, split, a baseline and a UIR training run,
    eval, score, compare and browse; prints curation precision and recall against the planted
    truth and the UIR vs baseline table. Rerunning reuses what is done.
    """
    from workbench.browse.app import serve
    from workbench.demo.run import DemoSettings, run_demo

    settings = DemoSettings(steps=steps)
    result = run_demo(workspace, settings, say=(lambda _: None) if as_json else
                      (lambda text: err.print(f"[dim]wb demo:[/dim] {text}", highlight=False)))
    if as_json:
        print_json(result)
        return
    print_demo(result)
    if launch:
        import fiftyone as fo

        serve(fo.load_dataset(result["browse"]["dataset"]), address="127.0.0.1", port=port,
              announce=lambda url: out.print(
                  f"App: {url}  (saved views: overlaps-to-review, duplicates, hardest-unknowns, "
                  "low-quality; Ctrl-C to stop)", highlight=False))
        out.print("App stopped")


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
        ("overlap: flagged overlap / also ambiguous", f"{ov['flagged']} / {wide['flagged']}"),
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


@app.command(rich_help_panel="Collect")
@handled
def ingest(
    path: Annotated[Path, typer.Argument(help="Folder (walked recursively) or single image.")],
    source: Annotated[str | None, typer.Option(
        help="Name of where the images came from.", show_default="folder name")] = None,
    aligned: Annotated[bool, typer.Option(
        "--aligned", help="Inputs are aligned 112x112 crops: no detection, one face each.",
    )] = False,
    workers: Annotated[int | None, typer.Option(
        help="Worker processes.", show_default="all cores")] = None,
    detector: DetectorOpt = "dlib",
    det_threshold: Annotated[float | None, typer.Option(
        help="Detector score threshold; lower finds more faces and more false ones.",
        show_default="dlib 0.0, YuNet 0.7, SCRFD 0.5")] = None,
    upsample: Annotated[int, typer.Option(
        help="dlib only: upsample before detection (finds faces under ~80 px, 4x slower per step).")] = 0,
    chunk_size: Annotated[int, typer.Option(
        help="Images per transaction: a crash redoes at most this many.")] = 512,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate, hash, detect and align every image under PATH into the manifest.

    Re-running adds only new or changed files; a killed run resumes where it stopped.
    """
    from workbench.ingest.pipeline import ingest as run_ingest

    ws = Workspace.at(workspace)
    with progress_bar("ingest", enabled=not as_json) as update:
        summary = run_ingest(ws, path, source=source, aligned=aligned, workers=workers,
                             detector=detector, det_threshold=det_threshold, upsample=upsample,
                             chunk_size=chunk_size, progress=update)
    if summary.files_seen == 0:
        raise WorkbenchError(f"no image files under {path}")
    if summary.processed > 0 and summary.decoded == 0:
        reasons = ", ".join(f"{n} {r}" for r, n in summary.rejected.most_common(3))
        raise WorkbenchError(f"nothing could be read under {path} ({reasons})")
    if as_json:
        print_json(summary.as_dict())
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


@app.command(rich_help_panel="Workspace")
@handled
def status(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Counts by source, status and rejection reason, faces, and the last runs."""
    from workbench.manifest.status import workspace_status

    ws = Workspace.at(workspace)
    with ws.connect(read_only=True) as con:
        info = workspace_status(con)
    if as_json:
        print_json(info)
        return
    out.print(kv_table(f"workspace {ws.root}", [
        ("files", info["files"]), ("images", info["images"]), ("faces", info["faces"])]))
    out.print(rows_table("by source", info["by_source"]))
    out.print(rows_table("rejected by reason", info["rejected_by_reason"]))
    for key in ("labeled_sets", "overlap", "splits", "reviews", "browse", "train_runs"):
        if info[key]:
            out.print(rows_table(key.replace("_", " "), info[key]))
    runs = [{k: r[k] for k in ("run_id", "command", "status", "started_at", "ended_at")}
            for r in info["last_runs"]]
    out.print(rows_table("last runs", runs))


labeled_app = typer.Typer(help="Register and inspect labeled sets (S), referred to by name later.",
                          no_args_is_help=True)
app.add_typer(labeled_app, name="labeled", rich_help_panel="Collect")


def print_set(summary: dict[str, Any]) -> None:
    rows: list[tuple[str, Any]] = [
        ("path", summary["path"]), ("format", summary["format"]),
        ("aligned", summary["aligned"]), ("identities", summary["identities"]),
        ("images", summary["images"]),
    ]
    rows += [(f"rejected: {reason}", n) for reason, n in summary["rejected"].items()]
    if summary["empty_identities"]:
        examples = ", ".join(summary["empty_identity_examples"][:3])
        rows.append(("identities without images", f"{summary['empty_identities']} ({examples})"))
    out.print(kv_table(f"labeled set {summary['name']}", rows))


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
    workers: Annotated[int | None, typer.Option(
        help="Worker processes for detection.", show_default="all cores")] = None,
    detector: DetectorOpt = "dlib",
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a labeled set: its identity list and sample index, not its pixels."""
    from workbench.labeled.register import register_labeled

    with progress_bar(f"labeled add {name}", enabled=not as_json) as update:
        summary = register_labeled(Workspace.at(workspace), name, path, fmt=fmt, aligned=aligned,
                                   image_column=image_column, label_column=label_column,
                                   workers=workers, detector=detector, progress=update)
    if as_json:
        print_json(summary)
    else:
        print_set(summary)
        if summary["already_registered"]:
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
        {k: s[k] for k in ("name", "format", "identities", "images", "path")} for s in sets]))


@labeled_app.command("remove")
@handled
def labeled_remove(
    name: Annotated[str, typer.Argument(help="The set to forget.")],
    workspace: WorkspaceOpt = None,
) -> None:
    """Forget a labeled set's registration; its files are not touched."""
    from workbench.labeled.register import remove_set

    summary = remove_set(Workspace.at(workspace), name)
    out.print(f"removed labeled set {name} ({summary['identities']} identities, "
              f"{summary['images']} images)")


@labeled_app.command("pairs")
@handled
def labeled_pairs(
    name: Annotated[str, typer.Argument(help="A registered labeled set.")],
    out_file: Annotated[Path, typer.Option("--out", help="The .bin file to write.")],
    folds: Annotated[int, typer.Option(help="Folds with disjoint identities.")] = 10,
    pairs_per_fold: Annotated[int, typer.Option(help="Pairs per fold, half same.")] = 600,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write LFW-style verification pairs from a labeled set as an InsightFace .bin."""
    from workbench.labeled.pairs import write_pairs

    counts = write_pairs(Workspace.at(workspace), name, out_file, n_folds=folds,
                         pairs_per_fold=pairs_per_fold, seed=seed)
    if as_json:
        print_json({"out": str(out_file), **counts})
    else:
        out.print(f"wrote {counts['pairs']} pairs ({counts['same']} same, "
                  f"{counts['different']} different) to {out_file}")


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
    per_identity: Annotated[int, typer.Option(
        help="Labeled faces sampled per identity for its centre.")] = 10,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    workers: Annotated[int | None, typer.Option(help="Worker processes.",
                                                show_default="all cores")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compute missing embeddings (and labeled identity centres); re-runs reuse what exists."""
    from workbench.embed.compute import embed as run_embed

    with progress_bar("embed", enabled=not as_json) as update:
        counts = run_embed(Workspace.at(workspace), model=model_spec(model, flip, model_norm), sets=set_names,
                           per_identity=per_identity, seed=seed, workers=workers, progress=update)
    report("embed", counts, as_json)


FlipOpt = Annotated[bool, typer.Option(help="Flip-averaged embeddings (2x the work).")]
WorkersOpt = Annotated[int | None, typer.Option(help="Worker processes.", show_default="all cores")]
FpirOpt = Annotated[float, typer.Option(
    help="Calibrated threshold: the share of unknown people's faces that may be flagged 'overlap' "
         "(open-set FPIR, per face, valid at any number of identities).")]
AmbiguousFpirOpt = Annotated[float, typer.Option(
    help="Looser FPIR: faces between its threshold and the main one are 'ambiguous' "
         "(also excluded from training).")]
CopyFpirOpt = Annotated[float, typer.Option(
    help="Share of unknown faces that may be taken for copies of a labeled photo.")]
CopiesOpt = Annotated[bool, typer.Option(
    help="Also search every labeled face for copies of labeled photos (embeds all of S once).")]


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
    per_identity: Annotated[int, typer.Option(help="Labeled faces per identity centre.")] = 10,
    model: ModelOpt = "dlib",
    flip: FlipOpt = False,
    model_norm: ModelNormOpt = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    workers: WorkersOpt = None,
    workspace: WorkspaceOpt = None,
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
                              settings=settings, workers=workers, progress=update)
    report(f"overlap with {labeled}", summary, as_json)


@app.command(rich_help_panel="Curate")
@handled
def dedupe(
    labeled: Annotated[str | None, typer.Option(
        help="Labeled set to calibrate the thresholds on.", show_default="the only one")] = None,
    recall: Annotated[float, typer.Option(help="Share of web copies to find (calibration).")] = 0.99,
    merge_rate: Annotated[float, typer.Option(
        help="Share of distinct photos of one person that may be merged (calibration).")] = 0.005,
    strict: Annotated[float | None, typer.Option(
        help="Fixed: cosine at which two faces are duplicates.", show_default="calibrated")] = None,
    loose: Annotated[float | None, typer.Option(
        help="Fixed: cosine above which a close crop hash also makes a duplicate.",
        show_default="calibrated")] = None,
    phash_bits: Annotated[int | None, typer.Option(
        help="Fixed: max differing bits of the crops' hashes.", show_default="calibrated")] = None,
    model: ModelOpt = "dlib",
    flip: FlipOpt = False,
    model_norm: ModelNormOpt = None,
    workers: WorkersOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Group near-duplicate unlabeled faces; the best-quality face represents each group.

    Thresholds are calibrated for the model on synthetic web copies of labeled faces
    (see `wb calibrate`) unless --strict/--loose/--phash-bits fix them.
    """
    from workbench.curate.calibrate import DedupeTargets
    from workbench.curate.dedupe import run_dedupe
    from workbench.curate.pairs import DedupeThresholds

    fixed = None
    if (strict, loose, phash_bits) != (None, None, None):
        base = DedupeThresholds()
        fixed = DedupeThresholds(base.strict if strict is None else strict,
                                 base.loose if loose is None else loose,
                                 base.phash_bits if phash_bits is None else phash_bits)
    with progress_bar("dedupe: embeddings", enabled=not as_json) as update:
        summary = run_dedupe(Workspace.at(workspace), model=model_spec(model, flip, model_norm),
                             thresholds=fixed, labeled_set=labeled,
                             targets=DedupeTargets(recall=recall, merge_rate=merge_rate),
                             workers=workers, progress=update)
    report("dedupe", summary, as_json)


@app.command(rich_help_panel="Curate")
@handled
def split(
    eval_unknown: Annotated[float, typer.Option(
        help="Share of clean unlabeled faces held out, as whole clusters, for rejection tests.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed for choosing held-out clusters.")] = 0,
    min_quality: Annotated[float, typer.Option(help="Faces below this quality are excluded.")] = MIN_QUALITY,
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
    out.print(kv_table("splits", list(summary["splits"].items())))
    out.print(kv_table("excluded by reason", list(summary["excluded_by_reason"].items())))


@app.command(rich_help_panel="Curate")
@handled
def calibrate(
    labeled: Annotated[str | None, typer.Option(
        "--labeled", help="Labeled set to measure on.", show_default="the only one")] = None,
    fpir: FpirOpt = 0.01,
    ambiguous_fpir: AmbiguousFpirOpt = 0.02,
    copy_fpir: CopyFpirOpt = 0.001,
    copies: CopiesOpt = True,
    recall: Annotated[float, typer.Option(help="Dedupe: share of web copies to find.")] = 0.99,
    merge_rate: Annotated[float, typer.Option(
        help="Dedupe: share of distinct photos of one person that may be merged.")] = 0.005,
    per_identity: Annotated[int, typer.Option(help="Labeled faces per identity centre.")] = 10,
    fresh: Annotated[bool, typer.Option("--fresh", help="Measure again even if stored.")] = False,
    model: ModelOpt = "dlib",
    flip: FlipOpt = False,
    model_norm: ModelNormOpt = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    workers: WorkersOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure overlap and dedupe thresholds for a model on a labeled set, with their error rates.

    Overlap: held-out labeled faces play unknown people (their identity removed from the
    gallery) and known people; the threshold flags --fpir of the unknown ones. Dedupe:
    synthetic web copies of labeled faces against distinct photos of the same person.
    Stored in the manifest (view wb_calibrations); `wb overlap` and `wb dedupe` reuse it.
    """
    from workbench.curate.calibrate import DedupeTargets, OverlapTargets, run_calibrate

    overlap_targets = OverlapTargets(fpir=fpir, ambiguous_fpir=ambiguous_fpir, copy_fpir=copy_fpir,
                                     copies=copies, per_identity=per_identity, seed=seed)
    with progress_bar("calibrate: embeddings", enabled=not as_json) as update:
        summary = run_calibrate(Workspace.at(workspace), labeled, model=model_spec(model, flip, model_norm),
                                overlap=overlap_targets,
                                dedupe=DedupeTargets(recall=recall, merge_rate=merge_rate, seed=seed),
                                fresh=fresh, workers=workers, progress=update)
    report(f"calibration of {summary['model_key']} on {summary['labeled_set']}", summary, as_json)


audit_app = typer.Typer(help="Measure the curation steps on your own data.", no_args_is_help=True)
app.add_typer(audit_app, name="audit", rich_help_panel="Curate")


@audit_app.command("overlap")
@handled
def audit_overlap(
    labeled: Annotated[str, typer.Option("--labeled", help="The labeled set to audit against.")],
    threshold: Annotated[str, typer.Option(help="'auto' or a score, as for `wb overlap`.")] = "auto",
    fpir: FpirOpt = 0.01,
    plant_fraction: Annotated[float, typer.Option(help="Share of identities planted.")] = 0.2,
    hold_out: Annotated[float, typer.Option(help="Share of a planted identity's faces held out.")] = 0.3,
    per_identity: Annotated[int, typer.Option(help="Labeled faces per identity centre.")] = 10,
    model: ModelOpt = "dlib",
    flip: FlipOpt = False,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    workers: WorkersOpt = None,
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
                            plant_fraction=plant_fraction, hold_out=hold_out, workers=workers,
                            progress=update)
    report(f"audit overlap with {labeled}", summary, as_json)


@app.command(rich_help_panel="Train")
@handled
def train(
    uir: Annotated[bool, typer.Option("--uir", help="Use the UIR loss (form: --uir-loss).")] = False,
    uir_loss: Annotated[str | None, typer.Option(
        help="reference (authors' release; default with --uir) | kl-uniform (paper's intent) | none.",
        show_default="reference with --uir, else none")] = None,
    uir_weight: Annotated[float, typer.Option(help="Weight of the UIR loss.")] = 0.1,
    unlabeled_ratio: Annotated[float, typer.Option(help="Share of each batch from unlabeled faces.")] = 0.25,
    labeled: Annotated[str | None, typer.Option(help="Labeled set.", show_default="the only one")] = None,
    split_name: Annotated[str, typer.Option("--split", help="Unlabeled split.")] = "train_unlabeled",
    backbone: Annotated[str, typer.Option(help="r18 | r34 | r50 | r100 | mbf.")] = "r50",
    width: Annotated[float, typer.Option(help="Channel width multiplier (small CPU runs).")] = 1.0,
    input_size: Annotated[int, typer.Option(help="Input side in pixels (crops are resized).")] = 112,
    embedding_size: Annotated[int, typer.Option(help="Embedding dimension.")] = 512,
    head: Annotated[str, typer.Option(help="arcface (s=64, m=0.5) | cosface (s=64, m=0.4).")] = "arcface",
    steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Epochs of the labeled set (if no --steps).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per process and step.")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD).")] = 0.1,
    warmup_steps: Annotated[int | None, typer.Option(help="Warmup steps.", show_default="10%")] = None,
    init: Annotated[Path | None, typer.Option(help="Fine-tune from a checkpoint or arcface_torch model.pt.")
                    ] = None,
    resume: Annotated[str | None, typer.Option(help="Resume this run id from its last checkpoint.")] = None,
    new: Annotated[bool, typer.Option(
        "--new", help="Train a fresh run even if a finished run of this recipe on the same data exists "
                      "(by default it is reused, and an interrupted one resumed).")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    amp: Annotated[str, typer.Option(help="none or bf16 (autocast; logits and losses stay fp32).")] = "none",
    num_workers: Annotated[int, typer.Option(help="DataLoader workers per process.")] = 2,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed for init and sampling.")] = 0,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train on the labeled set plus the curated unlabeled split (torchrun for several processes)."""
    from workbench.train.loop import TrainConfig
    from workbench.train.run import train as run_train
    from workbench.train.run import train_or_reuse

    form = uir_loss or ("reference" if uir else "none")
    config = TrainConfig(
        labeled=labeled, unlabeled_split=split_name, uir_loss=form, uir_weight=uir_weight,
        unlabeled_ratio=unlabeled_ratio, backbone=backbone, width=width, input_size=input_size,
        num_features=embedding_size, head=head, steps=steps, epochs=epochs, batch_size=batch_size,
        lr=lr, warmup_steps=warmup_steps, init=str(init) if init else None, device=device, amp=amp,
        num_workers=num_workers, checkpoint_every=checkpoint_every, seed=seed)
    with Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err,
                  disable=as_json or not err.is_terminal) as bar:
        task = bar.add_task("train", total=None, info="")

        def update(step: int, total: int, last: dict[str, float]) -> None:
            info = f"loss {last.get('loss', float('nan')):.3f}"
            if "images_per_s" in last:
                info += f" {last['images_per_s']:.0f} img/s"
            bar.update(task, completed=step, total=total, info=info)

        ws = Workspace.at(workspace)
        under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if resume is None and not new and not under_torchrun:
            result = train_or_reuse(ws, config, progress=update)
        else:
            result = run_train(ws, config, resume=resume, progress=update)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 reports
    report(f"train {result['run_id']}", result, as_json)


@app.command("export-model", rich_help_panel="Train")
@handled
def export_model(
    run_id: Annotated[str, typer.Argument(help="A training run id.")],
    onnx: Annotated[bool, typer.Option("--onnx", help="Write ONNX (opset 17, dynamic batch).")] = True,
    out_path: Annotated[Path | None, typer.Option("--out", help="Output file.",
                                                  show_default="runs/RUN/model.onnx")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a trained backbone; `wb embed --model onnx:PATH` reads the result."""
    from workbench.train.export import export_onnx

    ws = Workspace.at(workspace)
    with ws.connect(read_only=True) as con:
        row = one(con, "SELECT artifacts_dir FROM train_runs WHERE run_id = ?", [run_id])
    if row is None:
        raise WorkbenchError(f"no training run {run_id!r}")
    checkpoint = Path(row[0]) / "checkpoints" / "final.pt"
    if not checkpoint.exists():
        checkpoint = Path(row[0]) / "checkpoints" / "latest.pt"
    if not onnx:
        raise WorkbenchError("only --onnx export is supported")
    path = export_onnx(checkpoint, out_path or Path(row[0]) / "model.onnx")
    if as_json:
        print_json({"run_id": run_id, "onnx": str(path), "checkpoint": str(checkpoint)})
    else:
        out.print(f"wrote {path} (from {checkpoint})")


@app.command("eval", rich_help_panel="Evaluate")
@handled
def eval_run(
    run_id: Annotated[str, typer.Argument(help="A training run id.")],
    pairs: Annotated[Path | None, typer.Option(help="InsightFace verification .bin file.")] = None,
    pairs_from: Annotated[str | None, typer.Option(
        help="Generate pairs from this labeled set.", show_default="the run's labeled set")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verification, open-set rejection (AUROC, FPR@95TPR, DIR@FPIR) and centre sparsity."""
    from workbench.evaluate.evaluate import run_eval

    results = run_eval(Workspace.at(workspace), run_id, pairs_file=pairs, pairs_from=pairs_from)
    if as_json:
        print_json(results)
        return
    for section in ("verification", "open_set", "centre_distance"):
        flat = [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in results[section].items()
                if not isinstance(v, dict)]
        flat += [(f"{k} mean", f"{v['mean']:.4f}") for k, v in results[section].items()
                 if isinstance(v, dict) and "mean" in v]
        out.print(kv_table(f"{section} ({run_id})", flat))


@app.command(rich_help_panel="Evaluate")
@handled
def score(
    run_id: Annotated[str, typer.Argument(help="A training run id.")],
    set_names: Annotated[str, typer.Option(
        "--set", help="Comma-separated: 'unlabeled' (every face) or split names.")] = "unlabeled",
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write per-face max probability, predicted identity and entropy to wb_scores."""
    from workbench.evaluate.score import run_score

    with progress_bar("score", enabled=not as_json) as update:
        summary = run_score(Workspace.at(workspace), run_id, [s.strip() for s in set_names.split(",")],
                            progress=update)
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
    out.print(f"report: {result['report']}")


def comparison_table(result: dict[str, Any]) -> Table:
    """Metrics by arm (mean ± std over seeds), as `wb compare` and `wb demo` print them."""
    from workbench.evaluate.compare import ROWS

    table = Table(title="comparison (mean ± std over seeds)", title_justify="left")
    table.add_column("metric")
    for arm in result["arms"]:
        table.add_column(f"{arm['arm']} [{len(arm['runs'])}]")
    for label, _ in ROWS:
        cells = []
        for arm in result["arms"]:
            cell = arm[label]
            cells.append("n/a" if cell is None else f"{cell[0]:.4f} ± {cell[1]:.4f}")
        table.add_row(label, *cells)
    return table


@app.command(rich_help_panel="Collect")
@handled
def crawl(
    urls_file: Annotated[Path | None, typer.Argument(help="File of image or page URLs, one a line.")] = None,
    seed: Annotated[list[str] | None, typer.Option(help="Seed page URL; repeat for several.")] = None,
    depth: Annotated[int, typer.Option(help="Link depth followed from seed pages.")] = 1,
    out_dir: Annotated[Path, typer.Option("--out", help="Where images are stored as <sha256>.<ext>.")
                       ] = Path("webfaces"),
    allow_host: Annotated[list[str] | None, typer.Option(help="Also follow links to this host.")] = None,
    allow_private: Annotated[bool, typer.Option(
        "--allow-private", help="Allow loopback and private addresses (a local test server); "
                                "refused by default, redirects included.")] = False,
    rate: Annotated[float, typer.Option(help="Requests per second per host.")] = 1.0,
    per_host: Annotated[int, typer.Option(help="Requests in flight per host.")] = 2,
    max_bytes: Annotated[int, typer.Option(help="Byte cap per file, enforced while streaming.")
                         ] = 20 * 2**20,
    retries: Annotated[int, typer.Option(help="Retries on 429, 5xx and timeouts.")] = 3,
    timeout: Annotated[float, typer.Option(help="Read timeout in seconds.")] = 15.0,
    max_pages: Annotated[int | None, typer.Option(help="Stop after this many pages.")] = None,
    max_images: Annotated[int | None, typer.Option(help="Stop after this many images.")] = None,
    time_limit: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    contact: Annotated[str, typer.Option(help="Contact put in the User-Agent.")
                       ] = "https://github.com/uir-workbench",
    then_ingest: Annotated[bool, typer.Option("--ingest", help="Run `wb ingest` on what was fetched.")
                           ] = False,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Collect images politely (robots.txt, rate limits, retries), with provenance per URL."""
    from workbench.crawl.crawler import CrawlSettings, run_crawl

    ws = Workspace.at(workspace)
    out_path = out_dir if out_dir.is_absolute() else Path.cwd() / out_dir
    settings = CrawlSettings(out=out_path, depth=depth, allow_hosts=tuple(allow_host or ()), rate=rate,
                             allow_private=allow_private,
                             per_host=per_host, max_bytes=max_bytes, retries=retries,
                             read_timeout=timeout, max_pages=max_pages, max_images=max_images,
                             time_limit=time_limit, contact=contact)
    with Progress(TextColumn("crawl"), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                  console=err, disable=as_json or not err.is_terminal) as bar:
        task = bar.add_task("crawl", info="")
        def update(counts: dict[str, int]) -> None:
            bar.update(task, info=", ".join(f"{k} {v}" for k, v in counts.items()))

        summary = run_crawl(ws, urls_file=urls_file, seeds=list(seed or []), settings=settings,
                            progress=update)
    if then_ingest:
        from workbench.ingest.pipeline import ingest as run_ingest

        summary["ingest"] = run_ingest(ws, out_path, source="crawl").as_dict()
    if as_json:
        print_json(summary)
    else:
        out.print(kv_table("crawl", [(k, v) for k, v in summary.items() if k != "ingest"]))


DatasetOpt = Annotated[str | None, typer.Option(
    "--dataset", help="FiftyOne dataset name.", show_default="wb-<workspace folder>-<path hash>")]


@app.command(rich_help_panel="Browse")
@handled
def browse(
    dataset: DatasetOpt = None,
    where: Annotated[str | None, typer.Option(
        help="SQL condition choosing the faces, on: face_id, image_id, source, original_path, "
             "is_primary, quality, split, exclusion_reason, dup_group, dup_representative, "
             "dup_group_size, overlap_set, overlap_identity, overlap_similarity, overlap_score, "
             "overlap_decision, max_prob, pred_identity, entropy. Example: \"split = 'excluded'\".",
        show_default="all faces")] = None,
    run: Annotated[str | None, typer.Option(
        "--run", help="Training run whose rejection scores to show.", show_default="latest scored run")
    ] = None,
    port: Annotated[int, typer.Option(help="App port.")] = 5151,
    address: Annotated[str, typer.Option(help="Address the App binds to; 0.0.0.0 shares it on the network.")
                       ] = "127.0.0.1",
    launch: Annotated[bool, typer.Option("--launch/--no-launch", help="Start the App after syncing.")
                      ] = True,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Embeddings map from stored vectors (PCA).")
                    ] = True,
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
    """
    from workbench.browse.app import serve
    from workbench.browse.sync import run_browse_sync

    with progress_bar("browse: new samples", enabled=not as_json) as update:
        summary = run_browse_sync(Workspace.at(workspace), dataset_name=dataset, where=where,
                                  score_run=run, plot=plot, progress=update)
    report("browse", summary, as_json)
    if not launch:
        return
    import fiftyone as fo

    serve(fo.load_dataset(summary["dataset"]), address=address, port=port,
          announce=lambda url: out.print(f"App: {url}  (Ctrl-C to stop)", highlight=False))
    out.print("App stopped")


review_app = typer.Typer(help="Reviewers' tags from the FiftyOne App.", no_args_is_help=True)
app.add_typer(review_app, name="review", rich_help_panel="Browse")


@review_app.command("pull")
@handled
def review_pull(dataset: DatasetOpt = None, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Bring the App's review tags into the manifest (`wb_reviews`); `wb split` then honours them."""
    from workbench.browse.sync import run_review_pull

    report("review pull", run_review_pull(Workspace.at(workspace), dataset_name=dataset), as_json)


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
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Erase every trace of a person, source, image or URL; keep a non-identifying tombstone."""
    from workbench.governance.forget import run_forget

    if sum(v is not None for v in (identity, source, image, url)) != 1:
        raise WorkbenchError("give exactly one of --identity, --source, --image, --url")
    summary = run_forget(Workspace.at(workspace), identity=identity, source=source, image=image,
                         url=url, reason=reason, dry_run=dry_run)
    if as_json:
        print_json(summary)
        return
    out.print(kv_table("would erase" if dry_run else "erased",
                       [(k, v) for k, v in summary.items() if k != "stale_exports"]))
    for export_row in summary["stale_exports"]:
        out.print(f"stale export {export_row['export_id']}: {export_row['out']} (delete or re-export)")


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
        out.print(f"{'updated' if result['changed'] else 'unchanged'}: {result['path']}")
