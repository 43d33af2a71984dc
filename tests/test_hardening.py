"""Hardening, round two (#25): bounded time as well as bounded memory, inputs validated at the door.
Each reproducer of the issue as a test, through the CLI as a user would type it."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image

from tests.conftest import noise_image
from tests.crawl_server import FaultServer
from tests.helpers import manifest_rows, wb, wb_json
from workbench.cli import app
from workbench.errors import disk_full


def _rejected(ws: Path) -> dict[str, str]:
    return {Path(p).name: r for p, r in manifest_rows(ws, "SELECT path, reason FROM wb_files "
                                                          "WHERE status = 'rejected'")}


def test_a_tall_thin_png_is_a_reason_not_a_crash(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    Image.new("L", (16, 41000)).save(folder / "tall.png")  # 755 bytes
    noise_image(1, (200, 200)).save(folder / "ok.jpg")
    ws = tmp_path / "ws"
    for _ in range(2):  # a re-run does not die on the same file either
        proc = wb("ingest", str(folder), "-w", str(ws))
        assert "Traceback" not in proc.stderr
    assert _rejected(ws)["tall.png"] == "extreme aspect ratio (16x41000)"


def scan_flood(scans: int, side: int = 1000) -> bytes:
    """A progressive JPEG whose last scan is repeated `scans` times: every cap but time passes."""
    buf = io.BytesIO()
    noise_image(3, (side, side)).save(buf, "JPEG", progressive=True, quality=80)
    data = buf.getvalue()
    last, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:last] + data[last:end] * scans + data[end:]


def test_a_jpeg_that_repeats_one_scan_is_refused_in_no_time(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "flood.jpg").write_bytes(scan_flood(3000))
    noise_image(2, (200, 200)).save(folder / "ok.jpg")
    started = time.monotonic()
    wb("ingest", str(folder), "-w", str(tmp_path / "ws"))
    assert time.monotonic() - started < 30  # decoding it would take minutes
    assert _rejected(tmp_path / "ws")["flood.jpg"].startswith("too many JPEG scans (3009")


def test_an_aligned_set_with_a_scan_flood_or_a_huge_crop_gives_reasons(tmp_path):
    from workbench.formats.recordio import write_insightface_rec

    good = io.BytesIO()
    noise_image(4, (112, 112)).save(good, "JPEG")
    huge = io.BytesIO()
    Image.new("RGB", (4000, 4000)).save(huge, "JPEG")
    write_insightface_rec(tmp_path / "s" / "train.rec", [(0, good.getvalue()), (0, scan_flood(500, 112)),
                                                         (1, huge.getvalue()), (1, good.getvalue())],
                          num_classes=2)
    summary = wb_json("labeled", "add", "s", str(tmp_path / "s"), "-w", str(tmp_path / "ws"))
    assert summary["images"] == 2
    assert set(summary["rejected"]) == {"too many JPEG scans (509)", "not an aligned crop (4000x4000)"}


@pytest.mark.slow
@pytest.mark.parametrize(("options", "reason", "within"), [
    (["--min-rate", "1000"], "transfer slower than 1000 B/s", 12),
    (["--min-rate", "0", "--response-timeout", "2"], "response took over 2 s (a slow server)", 8),
])
def test_a_server_that_trickles_bytes_cannot_hang_the_crawl(tmp_path, options, reason, within):
    urls = tmp_path / "urls.txt"
    with FaultServer() as server:
        urls.write_text(f"{server.base}/trickle.jpg\n")
        started = time.monotonic()
        proc = wb("crawl", str(urls), "--allow-private", "--out", str(tmp_path / "out"),
                  "-w", str(tmp_path / "ws"), "--retries", "0", *options, check=False)
        took = time.monotonic() - started
    assert took < within
    assert proc.returncode == 1  # nothing at all was fetched, and the line says why
    assert proc.stderr.strip() == f"error: nothing could be fetched: 1 x {reason}"


@pytest.mark.slow
def test_the_time_limit_holds_during_a_download_and_leaves_it_pending(tmp_path):
    urls = tmp_path / "urls.txt"
    with FaultServer() as server:
        urls.write_text(f"{server.base}/trickle.jpg\n")
        started = time.monotonic()
        summary = wb_json("crawl", str(urls), "--allow-private", "--out", str(tmp_path / "out"),
                          "-w", str(tmp_path / "ws"), "--min-rate", "0", "--time-limit", "2")
        took = time.monotonic() - started
    assert took < 10 and summary["pending"] == 1  # resumed by the next crawl


def test_refused_seeds_say_why_and_exit_non_zero(tmp_path):
    with FaultServer() as server:
        proc = wb("crawl", "--seed", f"{server.base}/index.html", "--out", str(tmp_path / "out"),
                  "-w", str(tmp_path / "ws"), check=False)
        assert server.log == []  # nothing requested without --allow-private
    assert proc.returncode == 1
    assert "nothing could be fetched" in proc.stderr and "--allow-private" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _numeric_options() -> list[tuple[list[str], str, type, float | None, float | None]]:
    """Every numeric option of every command: (command path, option, type, min, max)."""
    found = []

    def walk(command: typing.Any, path: list[str]) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
            return
        for param in command.params:
            annotation = param.type_descriptor.annotation
            kinds = set(typing.get_args(annotation)) | {annotation}
            if kinds & {int, float} and annotation is not bool:
                kind = float if float in kinds else int
                found.append((path, param.opts[0], kind, param.min, param.max))

    walk(typer.main.get_command(app), [])
    return found


NUMERIC = _numeric_options()


def test_every_numeric_option_declares_its_range():
    unbounded = [f"wb {' '.join(p)} {o}" for p, o, _, lo, hi in NUMERIC if lo is None or hi is None]
    assert len(NUMERIC) > 60 and unbounded == []


@pytest.mark.parametrize(("path", "option", "kind", "low", "high"), NUMERIC,
                         ids=[f"{' '.join(p)} {o}" for p, o, *_ in NUMERIC])
def test_out_of_range_numbers_are_refused_in_one_line(path, option, kind, low, high):
    from typer.testing import CliRunner

    bad = [str(low - 1) if kind is int else "nan", str(high * 2 + 1) if kind is int else "inf"]
    for value in bad:
        result = CliRunner().invoke(app, [*path, option, value])
        assert result.exit_code == 2, (value, result.output)
        assert f"Invalid value for '{option}'" in result.output


def test_python_callers_get_the_same_ranges_and_a_memory_estimate():
    from workbench.errors import WorkbenchError
    from workbench.train.config import TrainConfig

    for bad in ({"batch_size": 0}, {"steps": -5}, {"epochs": float("nan")}, {"num_features": 0},
                {"input_size": 1}, {"epochs": -1.0}):
        with pytest.raises(WorkbenchError, match="must be between"):
            TrainConfig(**bad).validate()
    huge = TrainConfig(batch_size=65536)
    with pytest.raises(WorkbenchError, match="lower --batch-size"):
        huge.check_memory(85_742, 24 * 2**30)
    TrainConfig(backbone="r18", width=0.125, input_size=32, batch_size=16).check_memory(100, 2**30)


def test_a_full_disk_is_one_line_and_a_rerun_resumes(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        folder = tmp_path / "faces"
        folder.mkdir()
        for i in range(60):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (112, 112, 3), np.uint8)).save(
                folder / f"{i}.png")  # ~38 KB crops each, more than the disk holds
        ws = mount / "ws"
        proc = wb("ingest", str(folder), "--aligned", "--workers", "1", "-w", str(ws), check=False)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: disk full") and str(mount) in lines[0]
        subprocess.run(["mount", "-o", "remount,size=20m", str(mount)], check=True)
        wb("ingest", str(folder), "--aligned", "--workers", "1", "-w", str(ws))
        assert manifest_rows(ws, "SELECT count(*), count(DISTINCT path) FROM files") == [(60, 60)]
        assert manifest_rows(ws, "SELECT status FROM runs WHERE command = 'ingest' ORDER BY started_at")[0] \
            == ("failed",)  # not `killed`: the end of the run is recorded though the disk was full
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_is_recognised_through_duckdb_and_chained_errors():
    import errno

    oserror = OSError(errno.ENOSPC, "No space left on device", "/data/ws/crops/ab.jpg")
    assert "/data/ws/crops/ab.jpg" in disk_full(oserror)
    wrapped = RuntimeError("TransactionException: Failed to commit: could not write "
                           "'/data/ws/manifests/wb.duckdb.wal': No space left on device")
    assert "/data/ws/manifests/wb.duckdb.wal" in disk_full(wrapped)
    try:
        try:
            raise oserror
        except OSError as inner:
            raise ValueError("worker failed") from inner
    except ValueError as outer:
        assert disk_full(outer) is not None
    assert disk_full(ValueError("other")) is None


@pytest.mark.slow
def test_an_export_is_recorded_before_its_folder_appears_and_stored_absolute(tmp_path, monkeypatch):
    from tests.helpers import curated_workspace

    ws = curated_workspace(tmp_path / "ws", identities=6, per_identity=4, web=12, prefix="ex", seed=3)
    monkeypatch.chdir(tmp_path)
    result = wb_json("export", "--split", "train_unlabeled", "--format", "folder", "--out", "rel-out",
                     "-w", str(ws))
    assert result["out"] == str(tmp_path / "rel-out")
    assert manifest_rows(ws, "SELECT out FROM wb_exports") == [(str(tmp_path / "rel-out"),)]
    assert (tmp_path / "rel-out" / "manifest.csv").is_file()
    assert not list(tmp_path.glob(".rel-out.*.partial"))


@pytest.mark.slow
def test_long_manifest_queries_print_nothing_on_stdout(tmp_path):
    """DuckDB draws a progress bar on stdout for queries past 2 s (a million-face ingest has
    some); `wb ... --json` must stay JSON. The control shows DuckDB, left to itself, draws it."""
    slow = "SELECT count(*) FROM range(1000000000) t(i) WHERE hash(i) % 7 = 0"
    ours = ("from pathlib import Path; from workbench.manifest.workspace import Workspace\n"
            f"with Workspace.at(Path({str(tmp_path / 'ws')!r})).connect() as con:\n"
            f"    con.execute({slow!r}).fetchall()")
    plain = f"import duckdb; duckdb.connect({str(tmp_path / 'plain.duckdb')!r}).execute({slow!r}).fetchall()"
    printed = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              check=True).stdout for code in (ours, plain)]
    assert printed[0] == "" and "%" in printed[1]
