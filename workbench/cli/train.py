"""Train: `wb train` and `wb export-model`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.options import JsonOpt, WorkspaceOpt
from workbench.cli.render import err, handled, out, print_json, progress_bar, report
from workbench.errors import WorkbenchError
from workbench.manifest.workspace import Workspace

app = typer.Typer()


@app.command(rich_help_panel="Train")
@handled
def train(
    uir: Annotated[bool, typer.Option("--uir", help="Use the UIR loss (form: --uir-loss).")] = False,
    uir_loss: Annotated[str | None, typer.Option(
        help="reference (authors' release; default with --uir) | kl-uniform (paper's intent) | none.",
        show_default="reference with --uir, else none")] = None,
    open_set_loss: Annotated[str | None, typer.Option(
        help="A competing open-set loss on the unlabeled rows instead of UIR: objectosphere "
             "(entropic loss + feature magnitude; Dhamija et al. 2018) | energy (energy-bounded "
             "hinges; Liu et al. 2020). Weighted by --uir-weight.")] = None,
    uir_weight: Annotated[float, typer.Option(
        min=0.0, max=1000.0, help="Weight of the UIR (or --open-set-loss) term.")] = 0.1,
    unlabeled_ratio: Annotated[float, typer.Option(
        min=0.0, max=0.95, help="Share of each batch from unlabeled faces.")] = 0.25,
    labeled: Annotated[str | None, typer.Option(help="Labeled set.", show_default="the only one")] = None,
    split_name: Annotated[str, typer.Option("--split", help="Unlabeled split.")] = "train_unlabeled",
    backbone: Annotated[str, typer.Option(help="r18 | r34 | r50 | r100 | mbf.")] = "r50",
    width: Annotated[float, typer.Option(
        min=0.0625, max=4.0, help="Channel width multiplier (small CPU runs).")] = 1.0,
    input_size: Annotated[int, typer.Option(
        min=16, max=1024, help="Input side in pixels (crops are resized).")] = 112,
    embedding_size: Annotated[int, typer.Option(min=2, max=8192, help="Embedding dimension.")] = 512,
    head: Annotated[str, typer.Option(help="arcface (s=64, m=0.5) | cosface (s=64, m=0.4).")] = "arcface",
    steps: Annotated[int | None, typer.Option(min=1, max=100_000_000, help="Training steps.")] = None,
    epochs: Annotated[float | None, typer.Option(
        min=0.001, max=10_000.0, help="Epochs of the labeled set (if no --steps).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=65_536, help="Images per process and step.")] = 128,
    lr: Annotated[float, typer.Option(min=1e-8, max=1e12, help="Peak learning rate (SGD).")] = 0.1,
    warmup_steps: Annotated[int | None, typer.Option(
        min=0, max=100_000_000, help="Warmup steps.", show_default="10%")] = None,
    init: Annotated[str | None, typer.Option(
        help="Fine-tune: onnx:PATH (a pretrained ONNX recogniser, e.g. MobileFaceNet or an InsightFace "
             "ResNet; its embedding size and input are the model's), or PATH (a wb checkpoint or an "
             "arcface_torch backbone model.pt).")] = None,
    freeze_backbone_steps: Annotated[int, typer.Option(min=0, max=100_000_000,
        help="Head warm-up: steps during which only the new margin head learns.")] = 0,
    backbone_lr_mult: Annotated[float, typer.Option(min=0.0, max=100.0,
        help="Backbone learning rate as a multiple of --lr (fine-tuning: e.g. 0.1).")] = 1.0,
    freeze_bn: Annotated[bool, typer.Option(
        "--freeze-bn/--train-bn", help="Keep the backbone's BatchNorm statistics as they are "
                                       "(folded-BN models have none).")] = False,
    resume: Annotated[str | None, typer.Option(help="Resume this run id from its last checkpoint.")] = None,
    new: Annotated[bool, typer.Option(
        "--new", help="Train a fresh run even if a finished run of this recipe on the same data exists "
                      "(by default it is reused, and an interrupted one resumed).")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    amp: Annotated[str, typer.Option(help="none or bf16 (autocast; logits and losses stay fp32).")] = "none",
    num_workers: Annotated[int | None, typer.Option(
        min=0, max=256, help="DataLoader workers per process.",
        show_default="the cores per process, less one (up to 16)")] = None,
    keep_checkpoints: Annotated[int, typer.Option(
        min=1, max=1_000_000, help="Step checkpoints kept (besides best.pt and final.pt).")] = 3,
    checkpoint_every: Annotated[int, typer.Option(
        min=1, max=100_000_000, help="Steps between checkpoints.")] = 500,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed for init and sampling.")] = 0,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train on the labeled set plus the curated unlabeled split (torchrun for several processes)."""
    from workbench.train.config import TrainConfig
    from workbench.train.losses import OPEN_SET_LOSSES
    from workbench.train.run import run_train_command, slow_run_hint

    if open_set_loss is not None and (uir or uir_loss is not None):
        raise WorkbenchError("--open-set-loss replaces --uir / --uir-loss: give one of them")
    if open_set_loss is not None and open_set_loss not in OPEN_SET_LOSSES:
        raise WorkbenchError(f"--open-set-loss must be one of {', '.join(OPEN_SET_LOSSES)}")
    form = open_set_loss or uir_loss or ("reference" if uir else "none")
    config = TrainConfig(
        labeled=labeled, unlabeled_split=split_name, uir_loss=form, uir_weight=uir_weight,
        unlabeled_ratio=unlabeled_ratio, backbone=backbone, width=width, input_size=input_size,
        num_features=embedding_size, head=head, steps=steps, epochs=epochs, batch_size=batch_size,
        lr=lr, warmup_steps=warmup_steps, init=init, device=device, amp=amp,
        freeze_backbone_steps=freeze_backbone_steps, backbone_lr_mult=backbone_lr_mult, freeze_bn=freeze_bn,
        num_workers=num_workers, checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
        seed=seed)
    hinted = False
    with progress_bar("train", enabled=not as_json) as bar:
        def update(step: int, total: int, last: dict[str, float]) -> None:
            nonlocal hinted
            bar(step, total)
            speed = f" {last['images_per_s']:.0f} img/s" if "images_per_s" in last else ""
            bar.note(f"loss {last.get('loss', float('nan')):.3f}{speed}")
            if not hinted and "eta_s" in last:
                hinted = True
                if (hint := slow_run_hint(config, last["eta_s"])) is not None:
                    err.print(f"hint: {hint}", highlight=False)

        result = run_train_command(Workspace.at(workspace), config, resume=resume, new=new, progress=update)
    if result is not None:  # under torchrun, rank 0 reports
        report(f"train {result.run_id}", result, as_json)


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
    from workbench.train.export import export_run

    if not onnx:
        raise WorkbenchError("only --onnx export is supported")
    result = export_run(Workspace.at(workspace), run_id, out_path)
    if as_json:
        print_json(result)
    else:
        out.print(f"wrote {result.onnx} (from {result.checkpoint})")
