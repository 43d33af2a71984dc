"""Options shared by several commands, and the parsing they need."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from workbench.errors import WorkbenchError
from workbench.manifest.workspace import ENV_VAR

if TYPE_CHECKING:
    from workbench.embed.models import ModelSpec

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
DetectorOpt = Annotated[str | None, typer.Option(
    help="Face detector: dlib (HOG, packaged), yunet[:PATH] (small faces; PATH or $WB_YUNET_MODEL), "
         "scrfd:PATH (InsightFace's) or insightface:DIR (a model pack's det_*.onnx).",
    show_default="the workspace's (recorded with its first faces; yunet in a new workspace)")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show the calibration's internals too.")]
PerIdentityOpt = Annotated[int, typer.Option(min=1, max=100_000, help="Labeled faces per identity centre.")]
SeedOpt = Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Sampling seed.")]
FlipOpt = Annotated[bool, typer.Option(help="Flip-averaged embeddings (2x the work).")]
WorkersOpt = Annotated[int | None, typer.Option(
    min=1, max=1024, help="Worker processes.", show_default="all cores")]
RayOpt = Annotated[str | None, typer.Option(
    "--ray", envvar="WB_RAY_ADDRESS", show_default="no Ray: worker processes on this machine",
    help="Run the per-face work as Ray tasks: 'local' starts Ray on this machine, 'auto' joins the "
         "cluster this machine is in, HOST:PORT joins that one (needs the ray extra: "
         "pip install -e '.\\[ray]').")]
FpirOpt = Annotated[float, typer.Option(min=1e-6, max=0.5,
    help="Calibrated threshold: the share of unknown people's faces that may be flagged 'overlap' "
         "(open-set FPIR, per face, valid at any number of identities).")]
AmbiguousFpirOpt = Annotated[float, typer.Option(min=1e-6, max=0.5,
    help="Looser FPIR: faces between its threshold and the main one are 'ambiguous' "
         "(also excluded from training).")]
CopyFpirOpt = Annotated[float, typer.Option(min=1e-7, max=0.5,
    help="Share of unknown faces that may be taken for copies of a labeled photo.")]
CopiesOpt = Annotated[bool, typer.Option(
    help="Also search every labeled face for copies of labeled photos (embeds all of S once).")]
DatasetOpt = Annotated[str | None, typer.Option(
    "--dataset", help="FiftyOne dataset name.", show_default="wb-<workspace folder>-<path hash>")]


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

