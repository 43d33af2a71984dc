"""The crawler as a hostile server would test it: redirects to private addresses, robots.txt of
redirect targets, malformed URLs and headers. Every request goes to loopback; the link-local
metadata address is only ever refused by the guard, whose inner backend records any attempt."""

from __future__ import annotations

import asyncio
from pathlib import Path

import duckdb
import httpcore
import pytest

from tests.crawl_server import FaultServer
from workbench.crawl.crawler import CrawlSettings, _retry_after, run_crawl
from workbench.crawl.guard import BlockedAddress, GuardedBackend, address_problem
from workbench.crawl.html import parse_page
from workbench.manifest.workspace import Workspace


def only_127_0_0_1(address: str) -> str | None:
    """The test's stand-in for 'the public internet': 127.0.0.1, and the real rules elsewhere."""
    return None if address == "127.0.0.1" else address_problem(address, allow_private=False)


def loopback_names(host: str, port: int) -> list[str]:
    return {"localhost": ["127.0.0.1"], "also-local.test": ["127.0.0.1", "127.0.0.2"]}.get(host, [host])


def crawl(tmp_path: Path, seeds: list[str], allow_hosts: tuple[str, ...]) -> dict[str, dict]:
    ws = Workspace.at(tmp_path / "ws")
    settings = CrawlSettings(out=tmp_path / "out", rate=50, per_host=2, retries=1, backoff=0.05,
                             allow_hosts=allow_hosts, read_timeout=2)
    run_crawl(ws, urls_file=None, seeds=seeds, settings=settings, resolver=loopback_names,
              policy=only_127_0_0_1)
    con = duckdb.connect(str(ws.manifest_path), read_only=True)
    try:
        cur = con.execute("SELECT url, status, reason, final_url, redirects, robots FROM wb_crawl")
        return {r[0]: dict(zip(("url", "status", "reason", "final_url", "redirects", "robots"), r,
                               strict=True)) for r in cur.fetchall()}
    finally:
        con.close()


def test_redirects_to_private_addresses_are_refused_hop_by_hop(tmp_path):
    with FaultServer() as server:
        port = server.httpd.server_port
        targets = {
            "v4": f"http://127.0.0.2:{port}/img/a.jpg",
            "v6": f"http://[::1]:{port}/img/a.jpg",
            "two-addresses": f"http://also-local.test:{port}/img/a.jpg",
            "robots": f"http://localhost:{port}/private/secret.jpg",
            "fine": f"http://localhost:{port}/img/b.jpg",
            "scheme": "file:///etc/passwd",
            "other-host": "http://elsewhere.invalid/a.jpg",
        }
        seeds = [f"{server.base}/to/{url}" for url in targets.values()]
        got = crawl(tmp_path, seeds, ("127.0.0.2", "::1", "also-local.test", "localhost"))
        paths = [p for _, p in server.log]
    row = {name: got[f"{server.base}/to/{url}"] for name, url in targets.items()}
    for name in ("v4", "v6", "two-addresses"):
        assert row[name]["status"] == "failed"
        assert row[name]["reason"].startswith("address refused") and "loopback" in row[name]["reason"]
        assert row[name]["redirects"] == [targets[name]]
    assert row["robots"]["status"] == "disallowed"
    assert row["robots"]["reason"] == "robots.txt of the redirect target disallows"
    assert row["fine"]["status"] == "done" and row["fine"]["final_url"] == targets["fine"]
    assert row["scheme"]["reason"] == "redirect to scheme file"
    assert "another host" in row["other-host"]["reason"]
    # Nothing behind a refused hop was requested: the server only saw the seeds, robots.txt
    # (twice: 127.0.0.1 and localhost) and the one allowed target.
    assert "/private/secret.jpg" not in paths
    others = sorted(p for p in paths if not p.startswith("/to/"))
    assert others == ["/img/b.jpg", "/robots.txt", "/robots.txt"]


def test_the_guard_decides_before_connecting():
    attempts: list[tuple[str, int]] = []

    class Recording(httpcore.AsyncNetworkBackend):
        async def connect_tcp(self, host, port, *args, **kwargs):
            attempts.append((host, port))
            raise AssertionError("the guard let a connection through")

    def metadata(host: str, port: int) -> list[str]:
        return ["169.254.169.254"]

    guard = GuardedBackend(lambda a: address_problem(a, allow_private=False), metadata, Recording())
    with pytest.raises(BlockedAddress, match="link-local"):
        asyncio.run(guard.connect_tcp("metadata.test", 80))
    assert attempts == []
    assert "multicast" in address_problem("224.0.0.1", allow_private=True)
    assert address_problem("::ffff:10.0.0.1", allow_private=False).endswith("(--allow-private permits it)")
    assert address_problem("10.0.0.1", allow_private=True) is None
    assert address_problem("8.8.8.8", allow_private=False) is None


def test_malformed_urls_and_headers_are_reasons_not_crashes(tmp_path):
    links = parse_page('<img src="http://[bad"><img src="http://x:99999/a.jpg"><base href="http://[x">'
                       '<a href="/ok.jpg">', "http://127.0.0.1/")
    assert links.images == ["http://127.0.0.1/ok.jpg"]
    assert _retry_after("Sun, 29 Nov 2026 07:00:00 -0000") is not None
    assert _retry_after("not a date") is None and _retry_after("nan") is None
    with FaultServer() as server:
        seeds = [f"{server.base}/bad-links.html", f"{server.base}/bad-retry.jpg", "http://[bad",
                 f"{server.base}/to/http://[bad"]
        got = crawl(tmp_path, seeds, ())
        again = crawl(tmp_path, seeds, ())  # a re-run finds nothing pending and does not crash
    assert got["http://[bad"]["status"] == "failed" and "malformed URL" in got["http://[bad"]["reason"]
    assert got[f"{server.base}/bad-retry.jpg"]["status"] == "done"
    assert got[f"{server.base}/to/http://[bad"]["reason"] == "redirect without a valid Location"
    assert got[f"{server.base}/img/b.jpg"]["status"] == "done"
    assert all(r["status"] != "pending" for r in again.values())
