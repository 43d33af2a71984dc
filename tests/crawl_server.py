"""A local HTTP server on 127.0.0.1 serving faces, pages and every fault the crawler must survive."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import LFW, noise_image

TRICKLE_S = 0.25  # seconds between the bytes of /trickle.jpg


def face_jpegs(n: int) -> list[bytes]:
    """Real faces from lfw150 when present, generated images otherwise."""
    if LFW.is_dir():
        files = sorted(LFW.glob("*/*.jpg"))[:n]
        if len(files) == n:
            return [f.read_bytes() for f in files]
    out = []
    for i in range(n):
        buf = io.BytesIO()
        noise_image(7000 + i, (150, 150)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class FaultServer:
    def __init__(self, n_gallery: int = 0):
        self.log: list[tuple[float, str]] = []
        self.hits: dict[str, int] = {}
        self.faces = face_jpegs(4 + n_gallery)
        self.gallery = n_gallery
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def do_GET(self) -> None:
                server.log.append((time.monotonic(), self.path))
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                server.route(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str,
             headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            h.wfile.write(body)  # the crawler may give up on a slow response, as it should

    def route(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path
        hits = self.hits[path]
        if path == "/robots.txt":
            self.send(h, 200, b"User-agent: *\nDisallow: /private/\n", "text/plain")
        elif path == "/index.html":
            links = ["/img/a.jpg", "/img/copy-of-a.jpg", "/private/secret.jpg", "/missing.jpg",
                     "/flaky.jpg", "/busy.jpg", "/slow.jpg", "/big.jpg", "/fake.jpg", "/loop.jpg"]
            html = "".join(f'<img src="{u}">' for u in links)
            html += '<a href="http://other.invalid/elsewhere.jpg">x</a><a href="/page2.html">next</a>'
            html += '<a href="ftp://127.0.0.1/file.jpg">ftp</a>'
            self.send(h, 200, f"<html><body>{html}</body></html>".encode(), "text/html; charset=utf-8")
        elif path == "/page2.html":
            body = ('<html><head><link rel="license" href="https://creativecommons.org/licenses/by/4.0/">'
                    '</head><body><img srcset="/img/b.jpg 1x, /img/c.jpg 2x"></body></html>')
            self.send(h, 200, body.encode(), "text/html")
        elif path == "/gallery.html":
            imgs = "".join(f'<img src="/g/{i}.jpg">' for i in range(self.gallery))
            self.send(h, 200, f"<html>{imgs}</html>".encode(), "text/html")
        elif path.startswith("/g/"):
            self.send(h, 200, self.faces[4 + int(path[3:-4])], "image/jpeg")
        elif path in ("/img/a.jpg", "/img/copy-of-a.jpg"):
            self.send(h, 200, self.faces[0], "image/jpeg")
        elif path == "/img/b.jpg":
            self.send(h, 200, self.faces[1], "image/jpeg")
        elif path == "/img/c.jpg":
            self.send(h, 200, self.faces[2], "image/jpeg")
        elif path == "/flaky.jpg":
            if hits == 1:
                self.send(h, 500, b"oops", "text/plain")
            else:
                self.send(h, 200, self.faces[3], "image/jpeg")
        elif path == "/busy.jpg":
            if hits == 1:
                self.send(h, 429, b"slow down", "text/plain", {"Retry-After": "1"})
            else:
                self.send(h, 200, self.faces[3], "image/jpeg")
        elif path == "/slow.jpg":
            time.sleep(2.5)
            self.send(h, 200, self.faces[3], "image/jpeg")
        elif path == "/trickle.jpg":  # a true Content-Length, then one byte at a time, slowly
            body = self.faces[3]
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for i in range(len(body)):
                    h.wfile.write(body[i : i + 1])
                    h.wfile.flush()
                    time.sleep(TRICKLE_S)
        elif path == "/big.jpg":
            self.send(h, 200, self.faces[0] + b"\0" * 300_000, "image/jpeg")
        elif path == "/fake.jpg":
            self.send(h, 200, b"<html>not really a picture</html>", "image/jpeg")
        elif path == "/loop.jpg":
            self.send(h, 302, b"", "text/plain", {"Location": "/loop.jpg"})
        elif path.startswith("/to/"):  # /to/<url>: a redirect anywhere, as a hostile page would
            self.send(h, 302, b"", "text/plain", {"Location": path[len("/to/"):]})
        elif path == "/bad-links.html":
            body = '<img src="http://[bad"><img src="http://x:99999/a.jpg"><a href="/img/b.jpg">ok</a>'
            self.send(h, 200, body.encode(), "text/html")
        elif path == "/bad-retry.jpg":
            if hits == 1:
                self.send(h, 503, b"later", "text/plain",
                          {"Retry-After": "Sun, 29 Nov 2026 07:00:00 -0000"})
            else:
                self.send(h, 200, self.faces[1], "image/jpeg")
        else:
            self.send(h, 404, b"not found", "text/plain")


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
