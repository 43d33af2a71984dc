"""Ray cases, run by tests/test_ray.py inside a private network namespace (only loopback).

Real faces (a slice of lfw150), the real CLI, a real Ray: a local instance, and a simulated
two-node cluster on this machine (`ray.cluster_utils.Cluster`, nodes at 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import shared_model
from tests.helpers import kill_when, manifest_rows, manifest_snapshot, wb, wb_json

if os.environ.get("WB_PRIVATE_NETWORK") != "1":
    pytest.skip("run through tests/test_ray.py (inside a private network namespace)", allow_module_level=True)

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def images(tmp_path_factory, lfw_dir) -> Path:
    folder = tmp_path_factory.mktemp("ray-images")
    for person in sorted(lfw_dir.iterdir())[:70]:
        for photo in sorted(person.iterdir()):
            (folder / f"{person.name}__{photo.name}").symlink_to(photo)
    return folder


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> Path:
    """The same images ingested and embedded with local worker processes."""
    ws = tmp_path_factory.mktemp("reference") / "ws"
    wb("ingest", str(images), "-w", str(ws), "--workers", "2", "--chunk-size", "64")
    wb("embed", "--model", f"onnx:{shared_model('mobilefacenet_128d.onnx')}", "-w", str(ws), "--workers", "2")
    return ws


def vectors(ws: Path) -> dict[str, np.ndarray]:
    from workbench.embed.store import read_vectors
    from workbench.manifest.workspace import Workspace

    workspace = Workspace.at(ws)
    with workspace.connect(read_only=True) as con:
        face_ids = [r[0] for r in con.execute("SELECT face_id FROM faces ORDER BY face_id").fetchall()]
        model = con.execute("SELECT model_key FROM embedding_models").fetchone()[0]
        found, vecs = read_vectors(workspace, con, model, face_ids)
    assert found.all()
    return dict(zip(face_ids, vecs, strict=True))


def same_vectors(a: Path, b: Path) -> None:
    va, vb = vectors(a), vectors(b)
    assert va.keys() == vb.keys()
    assert max(float(np.abs(va[k] - vb[k]).max()) for k in va) < 1e-6


def test_a_local_ray_instance_gives_the_same_manifest(images, reference, tmp_path):
    ws = tmp_path / "ws"
    ingested = wb_json("ingest", str(images), "-w", str(ws), "--ray", "local", "--workers", "2",
                       "--chunk-size", "64")
    assert sum(ingested["ray_nodes"].values()) >= 2 and len(ingested["ray_nodes"]) == 1
    assert manifest_snapshot(ws) == manifest_snapshot(reference)
    embedded = wb_json("embed", "--model", f"onnx:{shared_model('mobilefacenet_128d.onnx')}", "-w", str(ws),
                       "--ray", "local", "--workers", "2")
    assert embedded["unlabeled_computed"] == ingested["faces"]
    same_vectors(ws, reference)
    counts = json.loads(manifest_rows(ws, "SELECT counts FROM runs WHERE command = 'embed'")[0][0])
    assert sum(counts["ray_nodes"].values()) >= 1


def test_ray_workers_read_a_filesystem_uri(images, reference, tmp_path):
    ws = tmp_path / "ws"
    wb("ingest", images.resolve().as_uri(), "-w", str(ws), "--ray", "local", "--workers", "2")
    paths = [r[0] for r in manifest_rows(ws, "SELECT path FROM files ORDER BY path")]
    assert paths and all(p.startswith("file://") for p in paths)
    for table in ("images", "faces", "crop_files"):
        assert manifest_snapshot(ws)[table] == manifest_snapshot(reference)[table]


def test_two_nodes_share_the_work_and_agree_with_one(images, reference, tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    try:
        ws = tmp_path / "ws"
        ingested = wb_json("ingest", str(images), "-w", str(ws), "--ray", cluster.address,
                           "--chunk-size", "64")
        assert len(ingested["ray_nodes"]) == 2, ingested["ray_nodes"]
        assert manifest_snapshot(ws) == manifest_snapshot(reference)
        wb("embed", "--model", f"onnx:{shared_model('mobilefacenet_128d.onnx')}", "-w", str(ws),
           "--ray", cluster.address)
        same_vectors(ws, reference)
    finally:
        cluster.shutdown()


def test_a_killed_driver_resumes_without_duplicates(images, reference, tmp_path):
    ws = tmp_path / "ws"
    cmd = [sys.executable, "-m", "workbench", "ingest", str(images), "-w", str(ws), "--ray", "local",
           "--workers", "2", "--chunk-size", "16"]
    kill_when(cmd, lambda: sum(1 for p in (ws / "crops").rglob("*") if p.is_file()) >= 40, timeout=120)
    partial = manifest_rows(ws, "SELECT count(*) FROM files")[0][0]
    assert 0 < partial < len(list(images.iterdir()))
    resumed = wb_json("ingest", str(images), "-w", str(ws), "--ray", "local", "--workers", "2")
    assert resumed["already_ingested"] == partial
    assert manifest_snapshot(ws) == manifest_snapshot(reference)
    runs = dict(manifest_rows(ws, "SELECT status, count(*) FROM wb_runs GROUP BY status"))
    assert runs == {"ok": 1, "killed": 1}


def shard_workers() -> list[int]:
    """Pids of Ray worker processes running an ingest shard right now."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"ray::_run_shard" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_worker_killed_mid_shard_is_retried_and_nothing_changes(images, reference, tmp_path):
    ws = tmp_path / "ws"
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "ingest", str(images), "-w", str(ws), "--ray",
                             "local", "--workers", "2", "--chunk-size", "256", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, killed = time.monotonic() + 120, None
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        running = shard_workers()
        if running:
            os.kill(running[0], signal.SIGKILL)
            killed = running[0]
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    assert killed is not None, "no shard was seen running"
    assert proc.returncode == 0, err
    assert manifest_snapshot(ws) == manifest_snapshot(reference)


def test_an_unreachable_cluster_is_one_line_and_writes_nothing(images, tmp_path):
    ws = tmp_path / "ws"
    started = time.monotonic()
    proc = wb("ingest", str(images), "-w", str(ws), "--ray", "127.0.0.1:9", check=False, timeout=300)
    assert proc.returncode == 1 and "cannot join the Ray cluster at 127.0.0.1:9" in proc.stderr
    assert len([line for line in proc.stderr.strip().splitlines() if line.startswith("error")]) == 1
    assert not (ws / "manifests").exists() or manifest_rows(ws, "SELECT count(*) FROM files") == [(0,)]
    assert time.monotonic() - started < 120


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> tuple[Path, str]:
    """A generated labeled set, ingested faces curated locally, and a tiny trained run."""
    from tests.helpers import curated_workspace

    ws = curated_workspace(tmp_path_factory.mktemp("gen"), identities=6, per_identity=4, web=40, prefix="p",
                           seed=3, near_duplicates=3)
    trained = wb_json("train", "-w", str(ws), "--backbone", "r18", "--width", "0.125", "--input-size", "32",
                      "--embedding-size", "32", "--batch-size", "8", "--num-workers", "0", "--steps", "2")
    return ws, trained["run_id"]


def test_scores_from_ray_tasks_equal_the_local_ones(curated, tmp_path):
    ws, run_id = curated
    copy = tmp_path / "copy"
    shutil.copytree(ws, copy)
    local = wb_json("score", run_id, "-w", str(ws))
    remote = wb_json("score", run_id, "-w", str(copy), "--ray", "local")
    assert local["scored_now"] == remote["scored_now"] == 43 and sum(remote["ray_nodes"].values()) >= 1
    query = "SELECT face_id, max_prob, pred_label, entropy FROM scores ORDER BY face_id"
    a, b = manifest_rows(ws, query), manifest_rows(copy, query)
    assert [r[0] for r in a] == [r[0] for r in b] and [r[2] for r in a] == [r[2] for r in b]
    assert np.allclose([r[1:2] + r[3:] for r in a], [r[1:2] + r[3:] for r in b], atol=1e-6)


def test_overlap_search_on_ray_decides_as_locally(curated, tmp_path):
    ws, _ = curated
    copy = tmp_path / "copy"
    shutil.copytree(ws, copy)
    query = "SELECT face_id, nearest_label, decision, cluster_score, copy_of FROM overlap ORDER BY face_id"
    scores = "SELECT score, similarity FROM overlap ORDER BY face_id"
    remote = wb_json("overlap", "--labeled", "gen", "--per-identity", "4", "-w", str(copy), "--ray", "local",
                     "--workers", "2")
    assert manifest_rows(copy, query) == manifest_rows(ws, query)
    assert np.allclose(manifest_rows(copy, scores), manifest_rows(ws, scores), atol=1e-6)
    counts = json.loads(manifest_rows(copy, "SELECT counts FROM runs WHERE run_id = ?",
                                      [remote["run_id"]])[0][0])
    assert sum(counts["ray_nodes"].values()) >= 3  # the searches ran as Ray tasks
