"""`wb demo` end to end (the real CLI, the default size), and the notebook run against its workspace."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import nbclient
import nbformat
import pytest

from tests.helpers import wb, wb_json
from workbench.demo import report

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo") / "wb-demo"
    result = json.loads(wb("demo", "--no-launch", "--json", "-w", str(root), timeout=900).stdout)
    return root, result


@pytest.mark.slow
def test_demo_runs_the_loop_and_finds_what_was_planted(demo):
    root, result = demo
    assert [s["step"].split(" train-")[0] for s in result["steps"]] == [
        "generate faces", "ingest webfaces (aligned)", "ingest scenes (detect + align)",
        "labeled add (RecordIO)", "train a model to curate with (ArcFace on S)", "overlap with S", "dedupe",
        "split", "train baseline (same batches, unlabeled rows unused)",
        "train --uir (same recipe + UIR loss)", "eval + score", "eval + score", "compare", "sync to FiftyOne"]
    truth = json.loads((root / "demo-data" / "truth.json").read_text())
    kinds = [meta["kind"] for meta in truth["files"].values()]
    cur = result["curation"]
    assert cur["junk_rejected"] == {"planted": 4, "rejected": 4, "reasons": [
        "empty file", "not an image", "too small (1x1)", "truncated or corrupt image"]}
    assert cur["faces_by_source"]["web"] == len(kinds) - kinds.count("junk") - kinds.count("scene")
    assert cur["overlap"]["planted"] == kinds.count("overlap")
    assert cur["overlap_or_ambiguous"]["recall"] >= 0.8
    assert cur["near_duplicates"]["recall"] >= 0.9 and cur["near_duplicates"]["precision"] >= 0.5
    assert result["labeled"]["identities"] == truth["size"]["labeled_identities"]
    assert len(set(result["runs"].values())) == 3, "the baseline is trained on the curated splits, not reused"
    arms = {arm["arm"]: arm for arm in result["comparison"]["arms"]}
    assert set(arms) == {"baseline (none)", "UIR reference (w=0.1)"}
    assert all(0.5 < arm["AUROC (MSP)"][0] <= 1 for arm in arms.values())
    assert result["browse"]["samples"] == sum(cur["faces_by_source"].values())
    assert Path(result["comparison"]["report"]).name == "report.html"
    assert Path(result["comparison"]["report"]).exists()
    # what it wrote for the README: the same result, and its Markdown
    written = json.loads((root / "demo-results.json").read_text())
    assert written["result"]["curation"] == cur and written["result"]["runs"] == result["runs"]
    assert (root / "demo-results.md").read_text() == report.markdown(written["result"],
                                                                     written["machine"]) + "\n"
    # the README's figures come from this demo: the same planted data, found the same way
    kept = json.loads((ROOT / report.KEPT).read_text())["result"]
    assert kept["curation"] == cur


@pytest.mark.slow
def test_rerunning_the_demo_reuses_its_work(demo):
    root, first = demo
    again = json.loads(wb("demo", "--no-launch", "--json", "-w", str(root), timeout=900).stdout)
    assert again["runs"] == first["runs"]
    assert again["ingest"]["web"]["new_images"] == 0 and again["browse"]["added"] == 0
    assert again["curation"] == first["curation"]
    assert "generate faces" not in [s["step"] for s in again["steps"]]
    assert wb_json("status", "-w", str(root))["faces"] == first["browse"]["samples"]


@pytest.mark.slow
def test_notebook_runs_against_the_demo_workspace(demo):
    root, result = demo
    notebook = nbformat.read(ROOT / "notebooks" / "explore_workspace.ipynb", as_version=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(WB_WORKSPACE=str(root), WB_NOTEBOOK_PORT=str(port))
    try:
        nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(root)}}).execute()
    finally:
        for key in ("WB_WORKSPACE", "WB_NOTEBOOK_PORT"):
            os.environ.pop(key)
    text = "\n".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []))
    assert f"{result['browse']['samples']} samples; saved views:" in text
    images = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
              if "image/png" in out.get("data", {})]
    assert len(images) == 2, "the overlap and rejection-score plots"
