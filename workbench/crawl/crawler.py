"""The crawl loop: a frontier in the manifest, async HTTP with per-host politeness.

Every URL tried is a row in `crawl_urls` (status `pending`, `done`, `failed`,
`disallowed`, `skipped`), so a killed crawl resumes from the manifest without
refetching finished URLs. Per host: at most `per_host` requests in flight and
at least `1 / rate` seconds between request starts (or the robots.txt
crawl-delay, if longer). robots.txt is honoured with protego; a robots.txt
that cannot be fetched for a server error disallows the host, a missing one
(4xx) allows it. Retries with exponential backoff on 429, 5xx and timeouts,
honouring Retry-After. Images are kept only when both the content type and
the magic bytes say image, and are stored once as `<sha256>.<ext>`.

Redirects are followed here, hop by hop, never by the HTTP client: each hop
must be http(s), on an allowed host, allowed by that host's robots.txt, and
(checked when connecting, `guard.py`) resolve to public addresses. The hop
chain is recorded. A malformed URL or header is a reason on that URL's row,
never a crash that would stop every re-run at the same place.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import httpx
from protego import Protego

from workbench import __version__
from workbench.crawl.guard import (
    REFUSED,
    GuardedBackend,
    Policy,
    Resolver,
    address_problem,
    system_resolver,
)
from workbench.crawl.html import parse_page
from workbench.crawl.urls import absolute_url, hostname, malformed, origin
from workbench.errors import WorkbenchError
from workbench.formats.images import sniff_format
from workbench.ingest.pipeline import run_ingest
from workbench.manifest.query import one
from workbench.manifest.runs import open_run
from workbench.manifest.workspace import Workspace
from workbench.results import Result

EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}
MAX_RETRY_AFTER = 60.0


@dataclass
class CrawlSettings:
    out: Path
    depth: int = 1
    allow_hosts: tuple[str, ...] = ()
    per_host: int = 2
    rate: float = 1.0  # request starts per second per host
    concurrency: int = 8
    connect_timeout: float = 5.0
    read_timeout: float = 15.0  # between two reads
    response_timeout: float = 120.0  # a whole response, headers to last byte
    min_rate: float = 4096.0  # bytes/s a body must keep up after RATE_GRACE_S (slow senders are dropped)
    retries: int = 3
    backoff: float = 0.5
    max_redirects: int = 5
    max_bytes: int = 20 * 2**20
    max_pages: int | None = None
    max_images: int | None = None
    time_limit: float | None = None
    contact: str = "https://github.com/uir-workbench"
    allow_private: bool = False  # loopback and private addresses (a local test server)

    @property
    def user_agent(self) -> str:
        return f"uir-workbench/{__version__} (+{self.contact})"


@dataclass
class Outcome:
    status: str
    http_status: int | None = None
    final_url: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    content_type: str | None = None
    robots: str | None = None
    license: str | None = None
    reason: str | None = None
    attempts: int = 0
    redirects: list[str] = field(default_factory=list)  # hops after the first URL, in order
    links: list[tuple[str, str]] = field(default_factory=list)  # (url, kind) found on a page
    body: bytes = field(default=b"", repr=False)


class HostGate:
    """Concurrency and spacing of requests to one host."""

    def __init__(self, per_host: int, interval: float):
        self.semaphore = asyncio.Semaphore(per_host)
        self.interval = interval
        self._lock = asyncio.Lock()
        self._next = 0.0
        self._last: float | None = None
        self.min_gap: float | None = None  # the closest two requests to this host were sent

    async def wait_turn(self) -> None:
        """Wait until `interval` has passed since the previous request to this host was sent."""
        async with self._lock:
            delay = self._next - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            if self._last is not None:
                gap = now - self._last
                self.min_gap = gap if self.min_gap is None else min(self.min_gap, gap)
            self._last, self._next = now, now + self.interval


class Crawler:
    def __init__(self, con: duckdb.DuckDBPyConnection, settings: CrawlSettings, run_id: str,
                 progress: Callable[[dict[str, int]], None] | None = None,
                 resolver: Resolver = system_resolver, policy: Policy | None = None):
        self.con, self.s, self.run_id, self.progress = con, settings, run_id, progress
        self.resolver = resolver
        self.policy = policy or partial(address_problem, allow_private=settings.allow_private)
        self.gates: dict[str, HostGate] = {}
        self.robots: dict[str, Protego | None] = {}
        self.robots_locks: dict[str, asyncio.Lock] = {}
        self.refused: dict[str, str] = {}  # origin -> why connecting to it was refused
        self.requested: list[str] = []  # every URL this process sent a request for
        self.counts = {"pages": 0, "images": 0, "failed": 0, "disallowed": 0, "skipped": 0}
        self.why_not: Counter[str] = Counter()  # reasons URLs were refused or failed, this run
        self.started = time.monotonic()
        self.seed_hosts: set[str] = set()

    # ---- frontier in the manifest -------------------------------------------------------
    def add(self, url: str, kind: str, referrer: str | None, depth: int) -> None:
        self.con.execute(
            "INSERT INTO crawl_urls (url, kind, referrer, depth, status, run_id) "
            "VALUES (?, ?, ?, ?, 'pending', ?) ON CONFLICT DO NOTHING",
            [url, kind, referrer, depth, self.run_id])

    def _pending(self, limit: int) -> list[tuple[str, str, int]]:
        return self.con.execute(
            "SELECT url, kind, depth FROM crawl_urls WHERE status = 'pending' "
            "ORDER BY depth, kind = 'page', url LIMIT ?", [limit]).fetchall()

    def _record(self, url: str, o: Outcome) -> None:
        self.con.execute(
            "UPDATE crawl_urls SET status = ?, http_status = ?, final_url = ?, fetched_at = ?, "
            "bytes = ?, sha256 = ?, content_type = ?, robots = ?, license = ?, reason = ?, "
            "attempts = attempts + ?, run_id = ?, redirects = ? WHERE url = ?",
            [o.status, o.http_status, o.final_url, datetime.now(UTC).replace(tzinfo=None), o.bytes,
             o.sha256, o.content_type, o.robots, o.license, o.reason, o.attempts, self.run_id,
             o.redirects or None, url])

    # ---- politeness -----------------------------------------------------------------------
    def _gate(self, host: str, delay: float = 0.0) -> HostGate:
        if host not in self.gates:
            self.gates[host] = HostGate(self.s.per_host, max(1.0 / self.s.rate, delay))
        return self.gates[host]

    async def _robots(self, client: httpx.AsyncClient, url: str) -> Protego | None:
        """The host's parsed robots.txt; None means the host is off limits (server error)."""
        home = origin(url)
        lock = self.robots_locks.setdefault(home, asyncio.Lock())
        async with lock:
            if home not in self.robots:
                text, ok = "", True
                try:
                    response = await self._robots_file(client, home + "/robots.txt")
                    if response is None or response.status_code >= 500:
                        ok = False
                    elif response.status_code < 300:
                        text = response.text
                except httpx.HTTPError as exc:
                    ok = False
                    if str(exc).startswith(REFUSED):
                        self.refused[home] = str(exc)
                parsed = Protego.parse(text) if ok else None
                self.robots[home] = parsed
                if parsed is not None and (delay := parsed.crawl_delay(self.s.user_agent)):
                    self.gates.pop(urlsplit(url).netloc, None)
                    self._gate(urlsplit(url).netloc, delay)
            return self.robots[home]

    async def _robots_file(self, client: httpx.AsyncClient, url: str) -> httpx.Response | None:
        """robots.txt, following redirects within the policy; None if a hop is not allowed."""
        for _ in range(self.s.max_redirects + 1):
            async with self._gate(urlsplit(url).netloc).semaphore:
                response = await client.get(url)
            if not response.is_redirect:
                return response
            url = absolute_url(url, response.headers.get("location"))
            if url is None or self._hop_problem(url):
                return None
        return None

    def _allowed_host(self, url: str) -> bool:
        host = hostname(url)
        return host in self.seed_hosts or host in self.s.allow_hosts

    def _hop_problem(self, url: str) -> str | None:
        """Why a redirect target may not be fetched (scheme and host; robots is asked after)."""
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https"):
            return f"redirect to scheme {scheme or 'missing'}"
        if not self._allowed_host(url):
            return f"redirect to another host {hostname(url)!r} (use --allow-host)"
        return None

    # ---- fetching -----------------------------------------------------------------------
    async def _get(self, client: httpx.AsyncClient, url: str) -> Outcome:
        """GET with retries, redirects checked hop by hop; the body is streamed and capped."""
        hops: list[str] = []
        outcome = await self._get_one(client, url, hops)
        outcome.redirects = hops
        return outcome

    async def _get_one(self, client: httpx.AsyncClient, url: str, hops: list[str]) -> Outcome:
        attempts = 0
        while True:
            attempts += 1
            outcome = await self._attempt(client, url, attempts)
            if outcome == "retry":
                continue
            if not isinstance(outcome, tuple):
                return outcome
            status, target = outcome  # a redirect: the connection is closed, the host's slot free
            problem = "redirect without a valid Location" if target is None else \
                "too many redirects" if len(hops) >= self.s.max_redirects else self._hop_problem(target)
            if target is not None:
                hops.append(target)
            if problem:
                return Outcome("failed", status, target, reason=problem, attempts=attempts)
            robots = await self._robots(client, target)
            if refused := self.refused.get(origin(target)):
                return Outcome("failed", status, target, reason=refused[:300], attempts=attempts)
            if robots is None or not robots.can_fetch(target, self.s.user_agent):
                return Outcome("disallowed", status, target, robots="disallowed",
                               reason="robots.txt of the redirect target disallows", attempts=attempts)
            url, attempts = target, 0

    async def _attempt(self, client: httpx.AsyncClient, url: str, attempts: int
                       ) -> Outcome | tuple[int, str | None] | str:
        """One request: an outcome, a redirect (status, target) or "retry"."""
        gate = self._gate(urlsplit(url).netloc)
        try:
            async with asyncio.timeout(self.s.response_timeout):
                return await self._response(client, gate, url, attempts)
        except TimeoutError:
            return Outcome("failed", final_url=url, attempts=attempts,
                           reason=f"response took over {self.s.response_timeout:g} s (a slow server)")

    async def _response(self, client: httpx.AsyncClient, gate: HostGate, url: str, attempts: int
                        ) -> Outcome | tuple[int, str | None] | str:
        try:
            async with gate.semaphore, client.stream("GET", url) as response:
                if response.is_redirect:
                    return response.status_code, absolute_url(url, response.headers.get("location"))
                retry_after = _retry_after(response.headers.get("retry-after"))
                if response.status_code == 429 or response.status_code >= 500:
                    await response.aclose()
                    if attempts <= self.s.retries:
                        await asyncio.sleep(retry_after if retry_after is not None
                                            else self.s.backoff * 2 ** (attempts - 1))
                        return "retry"
                    return Outcome("failed", response.status_code, str(response.url),
                                   reason=f"HTTP {response.status_code} after {attempts} tries",
                                   attempts=attempts)
                if response.status_code >= 400:
                    return Outcome("failed", response.status_code, str(response.url),
                                   reason=f"HTTP {response.status_code}", attempts=attempts)
                declared = _content_length(response.headers.get("content-length"))
                if declared > self.s.max_bytes:
                    return Outcome("failed", response.status_code, str(response.url), declared,
                                   reason="over the byte cap", attempts=attempts)
                body = bytearray()
                started = time.monotonic()
                async for block in response.aiter_bytes():
                    body += block
                    if len(body) > self.s.max_bytes:
                        return Outcome("failed", response.status_code, str(response.url),
                                       len(body), reason="over the byte cap", attempts=attempts)
                    if too_slow(len(body), time.monotonic() - started, self.s.min_rate):
                        return Outcome("failed", response.status_code, str(response.url), len(body),
                                       reason=f"transfer slower than {self.s.min_rate:g} B/s",
                                       attempts=attempts)
                return Outcome("done", response.status_code, str(response.url), len(body),
                               content_type=response.headers.get("content-type", ""),
                               attempts=attempts, body=bytes(body))
        except httpx.TimeoutException:
            if attempts <= self.s.retries:
                await asyncio.sleep(self.s.backoff * 2 ** (attempts - 1))
                return "retry"
            return Outcome("failed", reason=f"timed out after {attempts} tries", attempts=attempts)
        except httpx.ConnectError as exc:
            reason = str(exc) if str(exc).startswith(REFUSED) else f"ConnectError: {exc}"
            return Outcome("failed", final_url=url, reason=reason[:300], attempts=attempts)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            return Outcome("failed", reason=f"{type(exc).__name__}: {exc}"[:200], attempts=attempts)

    async def _visit(self, client: httpx.AsyncClient, url: str, kind: str, depth: int) -> None:
        if problem := malformed(url):
            self._finish(url, Outcome("failed", reason=f"malformed URL: {problem}"))
            return
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            self._finish(url, Outcome("skipped", reason=f"scheme {parts.scheme or 'missing'} not fetched"))
            return
        robots = await self._robots(client, url)
        if refused := self.refused.get(origin(url)):
            self._finish(url, Outcome("failed", reason=refused[:300]))
            return
        if robots is None or not robots.can_fetch(url, self.s.user_agent):
            reason = "robots.txt unavailable (server error)" if robots is None else "robots.txt disallows"
            self._finish(url, Outcome("disallowed", robots="disallowed", reason=reason))
            return
        outcome = await self._get(client, url)
        outcome.robots = outcome.robots or "allowed"
        body, outcome.body = outcome.body, b""
        if outcome.status == "done":
            ctype = (outcome.content_type or "").split(";")[0].strip().lower()
            if kind == "page" and ctype.startswith("text/html"):
                links = parse_page(body.decode("utf-8", errors="replace"), outcome.final_url or url)
                outcome.license = links.license
                outcome.links = [(u, "image") for u in links.images]
                if depth < self.s.depth:
                    outcome.links += [(u, "page") for u in links.pages]
            elif ctype.startswith("image/") and (fmt := sniff_format(body)):
                outcome.sha256 = hashlib.sha256(body).hexdigest()
                self._store(body, outcome.sha256, EXTENSIONS[fmt])
                self.con.execute("UPDATE crawl_urls SET kind = 'image' WHERE url = ?", [url])
            else:
                what = "bytes are not a known image format" if ctype.startswith("image/") else \
                    f"content type {ctype or 'missing'}"
                outcome.status, outcome.reason = "failed", f"not an image ({what})"
        self._finish(url, outcome)
        for link, link_kind in outcome.links:
            scheme = urlsplit(link).scheme  # links from parse_page are well formed
            if scheme not in ("http", "https"):
                self.add(link, link_kind, url, depth + 1)
                self._finish(link, Outcome("skipped", reason=f"scheme {scheme or 'missing'} not fetched"))
                continue
            if not self._allowed_host(link):
                self.add(link, link_kind, url, depth + 1)
                self._finish(link, Outcome("skipped", reason="other host (use --allow-host)"))
                continue
            self.add(link, link_kind, url, depth + (link_kind == "page"))

    def _finish(self, url: str, outcome: Outcome) -> None:
        self._record(url, outcome)
        key = {"done": None, "failed": "failed", "disallowed": "disallowed", "skipped": "skipped"}[
            outcome.status]
        if key:
            self.counts[key] += 1
            if key != "skipped":
                self.why_not[(outcome.reason or key)[:160]] += 1
        elif outcome.sha256:
            self.counts["images"] += 1
        else:
            self.counts["pages"] += 1
        if self.progress:
            self.progress(dict(self.counts))

    def _store(self, body: bytes, sha256: str, ext: str) -> None:
        path = self.s.out / f"{sha256}{ext}"
        if path.exists():
            return
        tmp = self.s.out / f".{sha256}.part"
        tmp.write_bytes(body)
        os.replace(tmp, path)

    def _time_left(self) -> float | None:
        if self.s.time_limit is None:
            return None
        return max(0.0, self.s.time_limit - (time.monotonic() - self.started))

    def _within_bounds(self) -> bool:
        if self.s.time_limit is not None and time.monotonic() - self.started > self.s.time_limit:
            return False
        if self.s.max_images is not None and self.counts["images"] >= self.s.max_images:
            return False
        return not (self.s.max_pages is not None and self.counts["pages"] >= self.s.max_pages)

    async def run(self) -> dict[str, Any]:
        self.s.out.mkdir(parents=True, exist_ok=True)
        for (url,) in self.con.execute("SELECT url FROM crawl_urls WHERE depth = 0").fetchall():
            self.seed_hosts.add(hostname(url))
        timeout = httpx.Timeout(self.s.read_timeout, connect=self.s.connect_timeout)
        transport = httpx.AsyncHTTPTransport()
        # Every connection goes through the address policy (the pool's backend is not a public option).
        transport._pool._network_backend = GuardedBackend(self.policy, self.resolver)
        async def pace_and_log(request: httpx.Request) -> None:
            # Spacing is applied to every request actually sent, redirect hops included.
            url = str(request.url)
            await self._gate(urlsplit(url).netloc).wait_turn()
            self.requested.append(url)

        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, transport=transport,
                                     headers={"User-Agent": self.s.user_agent},
                                     event_hooks={"request": [pace_and_log]}) as client:
            in_flight: set[str] = set()
            tasks: set[asyncio.Task] = set()
            while self._within_bounds():
                room = self.s.concurrency - len(tasks)
                fresh = [p for p in self._pending(room + len(in_flight)) if p[0] not in in_flight][:room]
                for url, kind, depth in fresh:
                    in_flight.add(url)
                    task = asyncio.create_task(self._visit(client, url, kind, depth))
                    task.add_done_callback(lambda _t, u=url: in_flight.discard(u))
                    tasks.add(task)
                if not tasks:
                    break
                # wake at the time limit even while every task waits on a slow server; what is
                # still in flight then is cancelled below and stays pending for the next crawl
                done, tasks = await asyncio.wait(tasks, timeout=self._time_left(),
                                                 return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            for task in tasks:
                task.cancel()
        left = one(self.con, "SELECT count(*) FROM crawl_urls WHERE status = 'pending'")[0]
        hosts = sorted({urlsplit(u).netloc for u in self.requested})
        gaps = [g.min_gap for g in self.gates.values() if g.min_gap is not None]
        return {**self.counts, "pending": int(left), "requests": len(self.requested), "hosts": hosts,
                "not_fetched": dict(self.why_not.most_common(5)),
                "min_request_gap_s": round(min(gaps), 4) if gaps else None}


RATE_GRACE_S = 5.0


def too_slow(received: int, seconds: float, min_rate: float) -> bool:
    """A body arriving slower than `min_rate` bytes/s on average, once RATE_GRACE_S have passed
    (one byte every two seconds with a true Content-Length never ends otherwise)."""
    return seconds > RATE_GRACE_S and received < min_rate * seconds


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), capped; None if
    absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # '-0000' means UTC with no claim about local time
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def _content_length(value: str | None) -> int:
    try:
        return max(0, int(value or 0))
    except ValueError:
        return 0


@dataclass
class CrawlResult(Result):
    """`wb crawl`: URLs by outcome, what is left pending, and (with --ingest) the ingest's summary."""

    pages: int
    images: int
    failed: int
    disallowed: int
    skipped: int
    pending: int
    requests: int
    hosts: list[str]
    stored_files: int
    run_id: str
    not_fetched: dict[str, int] = field(default_factory=dict)  # the commonest reasons, with counts
    min_request_gap_s: float | None = None  # the closest two requests to one host were sent
    ingest: dict[str, Any] | None = None


def run_crawl(
    workspace: Workspace, *, urls_file: Path | None, seeds: list[str], settings: CrawlSettings,
    progress: Callable[[dict[str, int]], None] | None = None, resolver: Resolver = system_resolver,
    policy: Policy | None = None, then_ingest: bool = False,
) -> CrawlResult:
    """`wb crawl`: add the inputs to the frontier, crawl until done or a bound is reached; with
    `then_ingest`, ingest what is stored (source `crawl`)."""
    inputs = list(seeds)
    if urls_file is not None:
        try:
            inputs += [line.strip() for line in urls_file.read_text().splitlines()
                       if line.strip() and not line.lstrip().startswith("#")]
        except OSError as exc:
            raise WorkbenchError(f"cannot read {urls_file}: {exc.strerror or exc}") from None
    params = {"urls_file": str(urls_file) if urls_file else None, "seeds": seeds,
              "out": str(settings.out), "depth": settings.depth, "allow_hosts": settings.allow_hosts,
              "rate": settings.rate, "per_host": settings.per_host, "max_pages": settings.max_pages,
              "max_images": settings.max_images, "time_limit": settings.time_limit,
              "allow_private": settings.allow_private}
    with open_run(workspace, "crawl", params) as (con, run):
        for url in inputs:
            con.execute("INSERT INTO crawl_urls (url, kind, referrer, depth, status, run_id) "
                        "VALUES (?, 'page', NULL, 0, 'pending', ?) ON CONFLICT DO NOTHING",
                        [url, run.run_id])
        if one(con, "SELECT count(*) FROM crawl_urls")[0] == 0:
            raise WorkbenchError("nothing to crawl: give a URLS_FILE or --seed URL")
        crawler = Crawler(con, settings, run.run_id, progress, resolver, policy)
        counts = asyncio.run(crawler.run())
        stored = sum(1 for p in settings.out.iterdir() if not p.name.startswith("."))
        result = CrawlResult(**counts, run_id=run.run_id, stored_files=stored)
        run.counts = result.as_dict()
        if result.pages + result.images == 0 and result.pending == 0 and result.not_fetched:
            reasons = "; ".join(f"{n} x {why}" for why, n in result.not_fetched.items())
            raise WorkbenchError(f"nothing could be fetched: {reasons}")
    if then_ingest and result.stored_files:
        result.ingest = run_ingest(workspace, settings.out, source="crawl").as_dict()
    return result
