"""`wb crawl` against a local server with every fault: outcomes, politeness, resume, provenance."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb
import pytest

from tests.crawl_server import FaultServer
from tests.helpers import kill_when, wb, wb_json


def rows(ws: Path) -> dict[str, dict]:
    con = duckdb.connect(str(ws / "manifests" / "wb.duckdb"), read_only=True)
    try:
        cur = con.execute("SELECT * FROM wb_crawl")
        names = [d[0] for d in cur.description]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
    finally:
        con.close()


@pytest.fixture(scope="module")
def crawled(tmp_path_factory):
    root = tmp_path_factory.mktemp("crawl")
    with FaultServer() as server:
        summary = wb_json("crawl", "--allow-private", "--seed", f"{server.base}/index.html",
                          "--out", str(root / "out"), "-w", str(root / "ws"), "--rate", "20",
                          "--per-host", "4", "--timeout", "1",
                          "--retries", "2", "--max-bytes", "200000", "--ingest")
        log = list(server.log)
    return root, server.base, summary, log, rows(root / "ws")


def test_each_fault_has_its_outcome(crawled):
    _, base, _, _, got = crawled
    expect = {
        "/img/a.jpg": ("done", None), "/img/copy-of-a.jpg": ("done", None),
        "/img/b.jpg": ("done", None), "/img/c.jpg": ("done", None),
        "/private/secret.jpg": ("disallowed", "robots.txt disallows"),
        "/missing.jpg": ("failed", "HTTP 404"),
        "/flaky.jpg": ("done", None), "/busy.jpg": ("done", None),
        "/slow.jpg": ("failed", "timed out after 3 tries"),
        "/big.jpg": ("failed", "over the byte cap"),
        "/fake.jpg": ("failed", "not an image (bytes are not a known image format)"),
        "/loop.jpg": ("failed", "too many redirects"),
    }
    for path, (status, reason) in expect.items():
        row = got[base + path]
        assert (row["status"], row["reason"]) == (status, reason), path
    assert got[base + "/flaky.jpg"]["attempts"] == 2 and got[base + "/busy.jpg"]["attempts"] == 2
    other = got["http://other.invalid/elsewhere.jpg"]
    assert other["status"] == "skipped" and other["attempts"] == 0
    assert got["ftp://127.0.0.1/file.jpg"]["status"] == "skipped"


def test_no_disallowed_or_foreign_request_was_made(crawled):
    _, base, summary, log, _ = crawled
    paths = [p for _, p in log]
    assert not any(p.startswith("/private/") for p in paths)
    # Every request the crawler sent reached this server: nothing went to any other address.
    assert summary["requests"] == len(paths)
    assert summary["hosts"] == [base.split("//")[1]]


def test_same_image_at_several_urls_is_stored_once_and_ingested_with_provenance(crawled):
    root, base, summary, _, got = crawled
    assert got[base + "/img/a.jpg"]["sha256"] == got[base + "/img/copy-of-a.jpg"]["sha256"]
    stored = sorted(p.name for p in (root / "out").iterdir())
    # a (twice), b, c, and flaky/busy which serve one more image: 6 URLs, 4 distinct files
    assert len(stored) == 4 and all(len(n.split(".")[0]) == 64 and n.endswith(".jpg") for n in stored)
    assert summary["images"] == 6 and summary["ingest"]["new_images"] == 4
    con = duckdb.connect(str(root / "ws" / "manifests" / "wb.duckdb"), read_only=True)
    joined = con.execute("SELECT p.url, p.license, p.robots, i.status FROM wb_provenance p "
                         "JOIN wb_images i USING (image_id)").fetchall()
    con.close()
    urls = {u: lic for u, lic, _, _ in joined}
    assert len(joined) == 6
    assert urls[base + "/img/b.jpg"] == "https://creativecommons.org/licenses/by/4.0/"
    assert all(robots == "allowed" for _, _, robots, _ in joined)


def test_retry_after_was_honoured(crawled):
    _, _, _, log, _ = crawled
    times = [t for t, p in log if p == "/busy.jpg"]
    assert len(times) == 2 and times[1] - times[0] >= 0.95


def test_rate_limit_holds_per_host(tmp_path):
    with FaultServer(n_gallery=12) as server:
        summary = json.loads(wb("crawl", "--allow-private", "--seed", f"{server.base}/gallery.html",
                                "--out", str(tmp_path / "out"), "-w", str(tmp_path / "ws"), "--rate", "5",
                                "--per-host", "3", "--json").stdout)
        arrivals = sorted(server.log)
    assert len(arrivals) == 14 and arrivals[0][1] == "/robots.txt"
    # The crawler's own spacing, measured where it sends: exact whatever the load on the machine.
    assert summary["min_request_gap_s"] >= 0.2
    # The server's view can shorten a gap (a request delayed on its way, the next one not), but
    # 14 requests still span at least 13 intervals.
    assert arrivals[-1][0] - arrivals[0][0] >= 13 * 0.2 - 0.1


@pytest.mark.slow
def test_killed_crawl_resumes_without_refetching(tmp_path):
    out, ws = tmp_path / "out", tmp_path / "ws"
    with FaultServer(n_gallery=30) as server:
        cmd = [sys.executable, "-m", "workbench", "crawl", "--allow-private",
               "--seed", f"{server.base}/gallery.html", "--out", str(out), "-w", str(ws),
               "--rate", "10", "--per-host", "1"]
        kill_when(cmd, lambda: out.exists() and len(list(out.glob("*.jpg"))) >= 10)
        done_before = {u for u, r in rows(ws).items() if r["status"] == "done" and "/g/" in u}
        # files land on disk just before their row commits, so the kill may catch one in between
        assert 5 <= len(done_before) < 30
        summary = json.loads(wb("crawl", "--allow-private", "-w", str(ws), "--out", str(out),
                                "--rate", "10", "--json").stdout)
        hits = dict(server.hits)
    assert summary["pending"] == 0
    assert all(hits["/" + u.split("/", 3)[3]] == 1 for u in done_before)
    assert len(list(out.glob("*.jpg"))) == 30


def test_bounds_stop_the_crawl_and_leave_the_rest_pending(tmp_path):
    with FaultServer(n_gallery=12) as server:
        summary = wb_json("crawl", "--allow-private", "--seed", f"{server.base}/gallery.html",
                          "--out", str(tmp_path / "out"), "-w", str(tmp_path / "ws"), "--rate", "50",
                          "--per-host", "1",
                          "--max-images", "3")
    assert summary["images"] == 3 and summary["pending"] == 9
