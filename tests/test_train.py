"""`wb train` on generated faces: end to end, exact resume, NaN stop, torchrun, export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from sklearn.metrics import roc_auc_score

from tests.conftest import noise_image
from tests.helpers import curated_workspace, manifest_rows, wb, wb_json
from workbench.embed.models import ModelSpec
from workbench.embed.store import read_vectors
from workbench.evaluate.model import TrainedRun
from workbench.manifest.workspace import Workspace
from workbench.train.checkpoint import Checkpoint
from workbench.train.config import TrainConfig
from workbench.train.run import run_train

SMALL = dict(backbone="r18", width=0.125, input_size=32, num_features=32, batch_size=16,
             num_workers=0, lr=0.05, log_every=1, warmup_steps=2)


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> Path:
    """A workspace with a labeled set, ingested unlabeled faces and splits (all generated)."""
    return curated_workspace(tmp_path_factory.mktemp("train"), identities=8, per_identity=5, web=24,
                             prefix="id", seed=0)


def metrics(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_uir_training_end_to_end(curated):
    result = run_train(Workspace.at(curated), TrainConfig(uir_loss="reference", steps=30, **SMALL))
    run_dir = Path(result.run_dir)
    lines = metrics(run_dir)
    assert len(lines) == 30 and all(np.isfinite(m["loss"]) for m in lines)
    assert np.mean([m["margin_loss"] for m in lines[-5:]]) < np.mean([m["margin_loss"] for m in lines[:5]])
    assert all(m["uir_loss"] > 0 for m in lines)
    assert (run_dir / "checkpoints" / "final.pt").exists()
    assert any((run_dir / "tensorboard").iterdir())
    con = duckdb.connect(str(curated / "manifests" / "wb.duckdb"), read_only=True)
    status, snapshot = con.execute("SELECT status, data_snapshot FROM wb_train_runs WHERE run_id = ?",
                                   [result.run_id]).fetchone()
    con.close()
    assert status == "done" and json.loads(snapshot)["identities"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["objectosphere", "energy"])
def test_a_competing_open_set_loss_trains_through_the_cli(curated, loss):
    result = wb_json("train", "--open-set-loss", loss, "--steps", "12", "--backbone", "r18", "--width",
                     "0.125", "--input-size", "32", "--embedding-size", "32", "--batch-size", "16",
                     "-w", str(curated))
    lines = metrics(result["run_dir"])
    assert lines[-1]["step"] == 12 and all(np.isfinite(m["loss"]) for m in lines)
    assert any(m["uir_loss"] > 0 for m in lines)  # the open-set term is logged where UIR's is
    both = wb("train", "--open-set-loss", loss, "--uir", "-w", str(curated), check=False)
    assert both.returncode == 1 and "--open-set-loss replaces --uir" in both.stderr


def test_resume_continues_exactly(curated):
    ws = Workspace.at(curated)
    config = dict(uir_loss="kl-uniform", steps=12, checkpoint_every=6, **SMALL)
    straight = metrics(run_train(ws, TrainConfig(**config)).run_dir)

    def interrupt_at_6(step, total, last):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_train(ws, TrainConfig(**config), progress=interrupt_at_6)
    con = duckdb.connect(str(curated / "manifests" / "wb.duckdb"), read_only=True)
    run_id = con.execute("SELECT run_id FROM train_runs WHERE status = 'interrupted'").fetchone()[0]
    con.close()
    resumed = metrics(run_train(ws, TrainConfig(), resume=run_id).run_dir)
    assert [m["step"] for m in resumed] == list(range(1, 13))
    for a, b in zip(straight, resumed, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-6)


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message(curated):
    proc = wb("train", "-w", str(curated), "--backbone", "r18", "--width", "0.125", "--input-size", "32",
              "--embedding-size", "32", "--batch-size", "16", "--num-workers", "0", "--steps", "50",
              "--lr", "1e12", "--warmup-steps", "0", check=False)
    assert proc.returncode == 1
    assert "loss became" in proc.stderr and "last good checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
    # one lifecycle: the failed run is in wb_runs as failed, with its reason, like any command
    failed = manifest_rows(curated, "SELECT r.status, r.error, t.status FROM wb_runs r "
                                    "JOIN train_runs t USING (run_id) ORDER BY r.started_at DESC LIMIT 1")
    assert failed[0][0] == "failed" and "loss became" in failed[0][1] and failed[0][2] == "failed"


@pytest.mark.slow
def test_baseline_needs_no_split_and_uir_does(tmp_path, curated):
    ws = tmp_path / "ws"
    shutil.copytree(curated, ws)
    con = duckdb.connect(str(ws / "manifests" / "wb.duckdb"))
    con.execute("DELETE FROM splits")
    con.close()
    proc = wb("train", "--uir", "-w", str(ws), "--steps", "1", check=False)
    assert proc.returncode == 1 and "run `wb split` first" in proc.stderr
    baseline = wb_json("train", "-w", str(ws), "--backbone", "r18", "--width", "0.125", "--input-size", "32",
                       "--embedding-size", "32", "--batch-size", "8", "--num-workers", "0", "--steps", "1",
                       "--json")
    assert baseline["steps"] == 1 and baseline["total_steps"] == 1


@pytest.mark.slow
def test_export_onnx_and_embed_with_onnx_and_ckpt(curated, tmp_path):
    result = run_train(Workspace.at(curated), TrainConfig(uir_loss="none", steps=3, **SMALL))
    exported = wb_json("export-model", result.run_id, "--onnx", "--out", str(tmp_path / "m.onnx"),
                       "-w", str(curated))
    import onnx

    model = onnx.load(exported["onnx"])
    assert model.opset_import[0].version >= 13
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    from workbench.embed.models import ModelSpec, load_embedder

    crops = np.stack([np.asarray(noise_image(i)) for i in range(3)])
    ckpt = load_embedder(ModelSpec.parse(f"ckpt:{exported['checkpoint']}")).embed(crops)
    # The ONNX model takes 32x32 input here (the run's --input-size), so compare on resized crops.
    small = torch.nn.functional.interpolate(
        (torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5, size=(32, 32),
        mode="bilinear", antialias=True, align_corners=False).numpy()
    import onnxruntime as ort

    onnx_out = ort.InferenceSession(exported["onnx"]).run(None, {"input": small})[0]
    onnx_out /= np.linalg.norm(onnx_out, axis=1, keepdims=True)
    assert np.allclose(np.sum(onnx_out * ckpt, axis=1), 1.0, atol=1e-3)
    counts = wb_json("embed", "--model", f"ckpt:{exported['checkpoint']}", "-w", str(curated))
    assert counts["unlabeled_computed"] == 24


@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_weights(curated):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "workbench", "train", "--uir",
         "-w", str(curated), "--backbone", "r18", "--width", "0.125", "--input-size", "32",
         "--embedding-size", "32", "--batch-size", "8", "--num-workers", "0", "--steps", "6", "--json"],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    digests = result["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]


@pytest.mark.slow
def test_eval_score_and_compare(curated, tmp_path):
    ws = Workspace.at(curated)
    runs = [run_train(ws, TrainConfig(uir_loss=kind, steps=8, seed=seed, **SMALL)).run_id
            for kind in ("none", "reference") for seed in (0, 1)]
    evals = {}
    for run_id in runs:
        results = wb_json("eval", run_id, "-w", str(curated))
        evals[run_id] = results["eval_id"]
        open_set = results["open_set"]
        assert open_set["known_probes"] == 8 and open_set["unknown_probes"] >= 1
        arrays = np.load(Path(results["checkpoint"]).parents[1] / "eval" / results["eval_id"] / "arrays.npz")
        labels = np.r_[np.ones(len(arrays["msp_known"])), np.zeros(len(arrays["msp_unknown"]))]
        assert open_set["auroc_msp"] == pytest.approx(
            roc_auc_score(labels, np.r_[arrays["msp_known"], arrays["msp_unknown"]]), abs=1e-9)
        assert results["centre_distance"]["n_classes"] == 8
        assert "skipped" in results["verification"]["note"]
    first_eval = evals[runs[0]]
    again = wb_json("eval", runs[0], "-w", str(curated))  # the same run, data and options: reused
    assert again["reused"] is True and again["eval_id"] == first_eval
    with ws.connect(read_only=True) as con:
        count = con.execute("SELECT count(*) FROM wb_evaluations WHERE run_id = ?", [runs[0]]).fetchone()[0]
    assert count == 1
    fresh = wb_json("eval", runs[0], "--no-flip", "-w", str(curated))  # other options: evaluated
    assert not fresh["reused"] and fresh["eval_id"] != again["eval_id"]
    scored = wb_json("score", runs[1], "--set", "train_unlabeled,eval_unknown", "-w", str(curated))
    again = wb_json("score", runs[1], "--set", "train_unlabeled,eval_unknown", "-w", str(curated))
    assert scored["scored_now"] == scored["faces"] > 0 and again["scored_now"] == 0
    with ws.connect(read_only=True) as con:
        rows = con.execute("SELECT face_id, max_prob, pred_identity, entropy FROM wb_scores "
                           "WHERE run_id = ? ORDER BY face_id", [runs[1]]).fetchall()
        trained = TrainedRun.load(con, runs[1])
    # the feature-norm score is the norm of the backbone's output before normalisation
    crops = np.stack([np.asarray(noise_image(i)) for i in range(3)])
    x = torch.nn.functional.interpolate(
        (torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5, size=(32, 32),
        mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        raw = Checkpoint.open(trained.checkpoint).backbone()(x).numpy()
    trained.flip = False
    unit, norms = trained.embed_with_norms(crops)
    assert np.allclose(norms, np.linalg.norm(raw, axis=1), rtol=1e-4)
    assert np.allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    assert 0.0 <= results["open_set"]["auroc_feature_norm"] <= 1.0
    with ws.connect(read_only=True) as con:
        key = ModelSpec("ckpt", str(trained.checkpoint), flip=True).key
        found, emb = read_vectors(ws, con, key, [r[0] for r in rows])
        names = dict(con.execute("SELECT label, identity FROM labeled_identities WHERE set_name = ?",
                                 [trained.config.labeled]).fetchall())
    assert len(rows) == scored["faces"] and found.all()
    # the stored scores are the softmax of s * cos to the class centres, recomputed here
    probs = scipy.special.softmax(trained.config.scale * emb @ trained.centres.T, axis=1)
    assert np.allclose([r[1] for r in rows], probs.max(axis=1), atol=1e-5)
    assert [r[2] for r in rows] == [names[i] for i in probs.argmax(axis=1)]
    assert np.allclose([r[3] for r in rows], scipy.stats.entropy(probs, axis=1), atol=1e-4)
    result = wb_json("compare", *runs, "--out", str(tmp_path / "cmp"), "-w", str(curated))
    arms = {a["arm"]: a for a in result["arms"]}
    assert set(arms) == {"baseline (none)", "UIR reference (w=0.1)"} and result["warnings"] == []
    assert all(len(a["runs"]) == 2 for a in arms.values())
    report = (tmp_path / "cmp" / "report.html").read_text()
    assert "AUROC" in report and (tmp_path / "cmp" / "msp_histograms.png").exists()


def test_embed_with_an_onnx_model(curated, tmp_path):
    from dataclasses import asdict

    from workbench.train.export import export_onnx
    from workbench.train.loop import FaceModel

    config = TrainConfig(backbone="r18", width=0.125, num_features=64)
    model = FaceModel(config, num_classes=4)
    torch.save({"model": model.state_dict(), "config": asdict(config)}, tmp_path / "ckpt.pt")
    onnx_path = export_onnx(tmp_path / "ckpt.pt", tmp_path / "r18.onnx")
    counts = wb_json("embed", "--model", f"onnx:{onnx_path}", "-w", str(curated))
    assert counts["unlabeled_computed"] == 24 and counts["model_key"].startswith("onnx-")
    again = wb_json("embed", "--model", f"onnx:{onnx_path}", "-w", str(curated))
    assert again["unlabeled_computed"] == 0


@pytest.mark.slow
def test_wb_train_reuses_a_finished_run_unless_asked_for_a_new_one(curated, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(curated, ws)
    args = ["train", "-w", str(ws), "--backbone", "r18", "--width", "0.125", "--input-size", "32",
            "--embedding-size", "32", "--batch-size", "16", "--num-workers", "0", "--steps", "3"]
    runs = "SELECT status, count(*) FROM wb_runs WHERE command = 'train' GROUP BY 1 ORDER BY 1"
    before = dict(manifest_rows(ws, runs))
    first = wb_json(*args)
    con = duckdb.connect(str(ws / "manifests" / "wb.duckdb"))  # as recorded before fine-tuning options
    stored = json.loads(con.execute("SELECT config FROM train_runs WHERE run_id = ?",
                                    [first["run_id"]]).fetchone()[0])
    for newer in ("freeze_backbone_steps", "backbone_lr_mult", "freeze_bn", "onnx_norm"):
        stored.pop(newer)
    con.execute("UPDATE train_runs SET config = ? WHERE run_id = ?", [json.dumps(stored), first["run_id"]])
    con.close()
    again = wb_json(*args)
    assert again["run_id"] == first["run_id"] and again["reused"] is True
    assert again["steps"] == first["steps"] == 3
    fresh = wb_json(*args, "--new")
    assert fresh["run_id"] != first["run_id"] and not fresh.get("reused")
    other = wb_json(*args[:-1], "4")  # another recipe is another run
    assert other["run_id"] not in (first["run_id"], fresh["run_id"])
    # three trainings and one reuse, each a finished row of wb_runs
    assert dict(manifest_rows(ws, runs)) == {**before, "ok": before.get("ok", 0) + 4}


def test_compare_warns_when_arms_trained_on_different_data():
    from workbench.evaluate.compare import data_warnings

    snapshot = {"labeled_set": "S", "labeled_digest": "a", "holdout_sample_idx": [3],
                "unlabeled_split": "train_unlabeled", "unlabeled_digest": "u", "unlabeled_faces": 40}
    config = {"uir_loss": "reference", "unlabeled_ratio": 0.25, "batch_size": 128}
    uir = {"run_id": "uir", "config": config, "snapshot": snapshot}
    same = {"run_id": "base", "config": {**config, "uir_loss": "none"}, "snapshot": snapshot}
    assert data_warnings([uir, same]) == []
    before_split = {"run_id": "early", "config": {**config, "uir_loss": "none"},
                    "snapshot": {**snapshot, "unlabeled_digest": "e3b0", "unlabeled_faces": 0}}
    assert data_warnings([uir, before_split]) == [
        "the runs differ in unlabeled split: uir; early",
        "the runs differ in labeled faces per step: uir; early"]  # 96 labeled faces a step vs 128
    other_set = {"run_id": "other", "config": config, "snapshot": {**snapshot, "labeled_digest": "b"}}
    assert data_warnings([uir, other_set]) == [
        "the runs differ in labeled data (set, samples or held-out probes): uir; other"]
