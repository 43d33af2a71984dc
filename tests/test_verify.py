"""`wb eval --model`: any model on a verification protocol, and LFW's pairs.txt reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import wb
from workbench.errors import WorkbenchError
from workbench.formats.pairs_txt import read_pairs_txt

SHARED = Path(__file__).resolve().parents[2] / "shared"
LFW = SHARED / "data" / "lfw150"
MOBILEFACENET = SHARED / "models" / "mobilefacenet_128d.onnx"


def photo(root: Path, name: str, number: int) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / f"{name}_{number:04d}.jpg").write_bytes(b"x")


def test_pairs_txt_keeps_the_protocol_folds_and_counts_what_is_missing(tmp_path):
    for name, number in [("Ann", 1), ("Ann", 2), ("Bob", 1), ("Cy", 3)]:
        photo(tmp_path, name, number)
    lines = ["2 1", "Ann 1 2", "Ann 1 Bob 1", "Cy 3 4", "Bob 1 Cy 3"]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    pairs = read_pairs_txt(tmp_path / "pairs.txt", tmp_path)
    assert pairs.listed == 4 and pairs.missing_images == 1  # Cy_0004
    assert [p.name for p in pairs.left] == ["Ann_0001.jpg", "Ann_0001.jpg", "Bob_0001.jpg"]
    assert pairs.issame.tolist() == [True, False, False]
    assert pairs.folds.tolist() == [0, 0, 1]  # the header's folds, not positions among those kept


@pytest.mark.parametrize("text, message", [
    ("3 1\nAnn 1 2\nAnn 1 Bob 1\n", "the header says 3 folds"),
    ("Ann 1\n", "pair line 1"),
    ("../etc 1 2\n", "pair line 1"),
    ("Zed 1 2\n", "none of the 1 pairs"),
])
def test_a_bad_pairs_file_is_one_line(tmp_path, text, message):
    photo(tmp_path, "Ann", 1)
    (tmp_path / "pairs.txt").write_text(text)
    with pytest.raises(WorkbenchError, match=message):
        read_pairs_txt(tmp_path / "pairs.txt", tmp_path)


@pytest.mark.skipif(not (LFW.is_dir() and MOBILEFACENET.is_file()),
                    reason="needs ../shared/data/lfw150 and ../shared/models (see the README)")
def test_any_model_is_evaluated_on_lfw_pairs_through_detection_and_alignment(tmp_path):
    """The first 40 same and 40 different pairs of the first fold of LFW's own protocol
    that lfw150 holds: MobileFaceNet gets nearly all of them right."""
    rows = [line.split() for line in (SHARED / "data" / "lfw_pairs.txt").read_text().splitlines()[1:601]]
    have = [r for r in rows if all((LFW / n / f"{n}_{int(i):04d}.jpg").is_file()
                                   for n, i in ([(r[0], r[1]), (r[0], r[2])] if len(r) == 3
                                                else [(r[0], r[1]), (r[2], r[3])]))]
    same, different = [r for r in have if len(r) == 3][:40], [r for r in have if len(r) == 4][:40]
    (tmp_path / "pairs.txt").write_text("\n".join(" ".join(r) for r in same + different) + "\n")
    result = wb("eval", "--model", f"onnx:{MOBILEFACENET}", "--pairs", str(tmp_path / "pairs.txt"),
                "--images", str(LFW), "--detector", "yunet", "--json")
    figures = json.loads(result.stdout)
    assert figures["n_pairs"] == 80 and figures["no_face"] == 0 and figures["detector"].startswith("yunet-")
    assert figures["model"].endswith("+flip") and figures["accuracy"] >= 0.95
    assert np.isfinite(figures["threshold"])


def test_eval_takes_a_run_or_a_model_not_both(tmp_path):
    result = wb("eval", "r1", "--model", "dlib", "--pairs", str(tmp_path / "p.txt"), check=False)
    assert result.returncode == 1 and "give a run id or --model" in result.stderr + result.stdout
