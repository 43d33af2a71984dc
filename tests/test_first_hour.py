"""A new user's first hour (#30): warnings where a target is missed, progress outside a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import noise_image
from tests.helpers import wb_json
from workbench.curate.calibration import DedupeCalibration
from workbench.curate.splits import split_warnings
from workbench.demo import report

ROOT = Path(__file__).resolve().parents[1]


def test_a_dedupe_rule_below_its_recall_target_says_so():
    missed = DedupeCalibration(strict=0.9, loose=0.8, phash_bits=4, target_recall=0.99,
                               target_merge_rate=0.005, copies=400, distinct_pairs=1000, recall=0.67,
                               recall_95ci=(0.62, 0.71), merge_rate=0.004, merge_rate_95ci=(0.001, 0.01),
                               recall_by_transform={"tone": 0.9, "mirror": 0.4, "crop": 0.6})
    assert "0.67 of synthetic web copies (fewest: mirror 0.40, crop 0.60)" in missed.warnings()[0]
    assert len(missed.warnings()) == 1
    own_copies = DedupeCalibration(**{**missed.__dict__, "distinct_like_copies": 30})
    assert "30 more pairs of one labeled person's photos" in own_copies.warnings()[1]
    met = DedupeCalibration(**{**missed.__dict__, "recall": 0.99, "recall_95ci": (0.98, 0.995)})
    assert met.warnings() == []


def test_an_empty_train_unlabeled_split_says_why():
    lines = split_warnings({"excluded": 40}, {"overlap": 30, "duplicate": 10})
    assert len(lines) == 1 and "no face is left in train_unlabeled (30 overlap, 10 duplicate)" in lines[0]
    assert split_warnings({"excluded": 3, "train_unlabeled": 1}, {"overlap": 3}) == []


def test_identities_with_every_image_rejected_are_warned_about(tmp_path):
    good, bad = tmp_path / "set" / "alice", tmp_path / "set" / "bob"
    good.mkdir(parents=True)
    bad.mkdir()
    noise_image(1, (112, 112)).save(good / "0.jpg")
    (bad / "0.jpg").write_bytes(b"not an image")
    summary = wb_json("labeled", "add", "s", str(tmp_path / "set"), "--aligned", "-w", str(tmp_path / "ws"))
    assert summary["identities"] == 2 and len(summary["warnings"]) == 1
    assert summary["warnings"][0].startswith("1 identities had every image rejected (e.g. bob)")


def test_progress_is_logged_outside_a_terminal(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(40):
        noise_image(i, (112, 112)).save(folder / f"{i}.png")
    proc = subprocess.run([sys.executable, "-m", "workbench", "ingest", str(folder), "--aligned", "--workers",
                           "1", "--chunk-size", "8", "-w", str(tmp_path / "ws")], capture_output=True,
                          text=True, env={**os.environ, "WB_PROGRESS_EVERY": "0"}, check=True)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ingest: ")]
    assert lines and "/s" in lines[-1]  # count, rate and time left, as a log line


def test_the_readme_shows_what_the_demo_printed():
    """The README's demo section is the Markdown of the kept demo result, word for word."""
    kept = json.loads((ROOT / report.KEPT).read_text())
    section = report.section_of((ROOT / "README.md").read_text())
    assert section == report.markdown(kept["result"], kept["machine"]), (
        "README's demo section is stale: python -m workbench.demo.report "
        "wb-demo/demo-results.json README.md")


def test_the_demo_report_reads_its_directions_from_the_numbers():
    kept = json.loads((ROOT / report.KEPT).read_text())
    result = kept["result"]
    arms = {arm["arm"]: arm for arm in result["comparison"]["arms"]}
    base, uir = arms[report.BASELINE], arms[report.UIR]
    for before, after, word in ((0.8, 0.7, "lowered"), (0.7, 0.8, "raised")):
        base["MSP eval_unknown (mean)"], uir["MSP eval_unknown (mean)"] = [before, 0.0], [after, 0.0]
        assert f"UIR {word} the mean confidence on held-out unknown people ({before:.3f} -> {after:.3f})" \
            in report.markdown(result, "m")


def test_help_uses_plain_words():
    """Values read TEXT, INTEGER, PATH; flags show no value; required arguments are bare in the usage."""
    text = subprocess.run([sys.executable, "-m", "workbench", "ingest", "--help"], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "200"}, check=True).stdout
    assert "Usage: wb ingest [OPTIONS] PATH" in text
    assert "<bool>" not in text and "<str>" not in text and "{path}" not in text
    assert "INTEGER [1<=x<=1024]" in text and "--source                 TEXT" in text


def test_the_ingest_bar_knows_its_total_from_the_start(tmp_path):
    """The folder is counted before the work starts: every update carries the same total, and a
    rerun counts the files it skips as done."""
    from workbench.ingest.pipeline import run_ingest
    from workbench.manifest.workspace import Workspace

    folder = tmp_path / "faces"
    for i in range(7):
        (folder / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        noise_image(i).save(folder / f"d{i % 2}" / f"{i}.png")
    updates: list[tuple[int, int | None]] = []
    run_ingest(Workspace.at(tmp_path / "ws"), folder, aligned=True, chunk_size=3, workers=1,
               progress=lambda done, total: updates.append((done, total)))
    assert {total for _, total in updates} == {7} and [d for d, _ in updates] == list(range(1, 8))
    noise_image(99).save(folder / "d0" / "new.png")
    again: list[tuple[int, int | None]] = []
    run_ingest(Workspace.at(tmp_path / "ws"), folder, aligned=True, workers=1,
               progress=lambda done, total: again.append((done, total)))
    assert again == [(8, 8)]
