"""Named models (`wb models`): downloads only from a local server on 127.0.0.1, resumed, checked
by hash, never left half under their final name; names resolve wherever a spec is taken."""

from __future__ import annotations

import hashlib
import shutil
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import shared_model
from tests.helpers import wb
from workbench import zoo
from workbench.embed.models import ModelSpec
from workbench.errors import WorkbenchError
from workbench.faces.detectors import DetectorSpec

BODY = bytes(range(256)) * 4096  # 1 MiB


class ModelServer:
    """/good.onnx (Range-aware), /cut.onnx (the first response stops halfway), /missing.onnx (404),
    /broken.onnx (500), /away.onnx (a redirect to a non-loopback host)."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def do_GET(self) -> None:
                server.hits.append((self.path, self.headers.get("Range")))
                server.route(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def route(self, h: BaseHTTPRequestHandler) -> None:
        name = h.path.rsplit("/", 1)[-1]
        start = int(h.headers["Range"].split("=")[1].split("-")[0]) if h.headers.get("Range") else 0
        if name in ("good.onnx", "cut.onnx", "face_recognition_sface_2021dec.onnx"):
            first_cut = name == "cut.onnx" and sum(p.endswith("cut.onnx") for p, _ in self.hits) == 1
            h.send_response(206 if start else 200)
            h.send_header("Content-Length", str(len(BODY) - start))
            h.end_headers()
            h.wfile.write(BODY[start : len(BODY) // 2] if first_cut else BODY[start:])
            if first_cut:
                h.wfile.flush()
                h.close_connection = True
        elif name == "away.onnx":
            h.send_response(302)
            h.send_header("Location", "http://example.com/away.onnx")
            h.send_header("Content-Length", "0")
            h.end_headers()
        else:
            h.send_response(404 if name == "missing.onnx" else 500)
            h.send_header("Content-Length", "0")
            h.end_headers()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("WB_MODELS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    served = ModelServer()
    yield served
    served.close()


def add(monkeypatch, file: str, sha256: str | None = hashlib.sha256(BODY).hexdigest(), **extra) -> str:
    """A registry entry of the real entries' shape, served by the test server."""
    name = f"test-{file.split('.')[0]}"
    model = replace(zoo.REGISTRY["sface"], name=name, file=file, url=f"http://127.0.0.1:1/{file}",
                    size=len(BODY), sha256=sha256, **extra)
    monkeypatch.setitem(zoo.REGISTRY, name, model)
    return name


def test_a_good_file_lands_checked_under_its_name(server, monkeypatch):
    name = add(monkeypatch, "good.onnx")
    path = zoo.pull(name, mirror=server.base)
    assert path.read_bytes() == BODY and path.name == "good.onnx"
    assert zoo.pull(name, mirror=server.base) == path and len(server.hits) == 1  # here: no request
    assert zoo.local_path(zoo.REGISTRY[name]) == path


def test_a_cut_transfer_resumes_and_leaves_no_partial_file_under_the_final_name(server, monkeypatch):
    name = add(monkeypatch, "cut.onnx")
    with pytest.raises(WorkbenchError, match="run the same pull again to resume"):
        zoo.pull(name, mirror=server.base)
    folder = zoo.cache_dir() / name
    assert not (folder / "cut.onnx").exists() and (folder / "cut.onnx.part").stat().st_size == len(BODY) // 2
    path = zoo.pull(name, mirror=server.base)
    assert path.read_bytes() == BODY and server.hits[-1][1] == f"bytes={len(BODY) // 2}-"
    assert not (folder / "cut.onnx.part").exists()


def test_a_wrong_hash_keeps_nothing(server, monkeypatch):
    name = add(monkeypatch, "good.onnx", sha256="0" * 64)
    with pytest.raises(WorkbenchError, match="SHA-256"):
        zoo.pull(name, mirror=server.base)
    assert list((zoo.cache_dir() / name).iterdir()) == []


@pytest.mark.parametrize(("file", "message"), [("missing.onnx", "HTTP 404"), ("broken.onnx", "HTTP 500"),
                                               ("away.onnx", "refused to fetch http://example.com")])
def test_errors_and_a_redirect_off_the_mirror_are_one_line_refusals(server, monkeypatch, file, message):
    name = add(monkeypatch, file)
    with pytest.raises(WorkbenchError, match=message):
        zoo.pull(name, mirror=server.base)
    assert not (zoo.cache_dir() / name / file).exists()
    assert all(path.endswith(file) for path, _ in server.hits)  # example.com was never asked


def test_a_pack_without_a_published_hash_records_its_first_and_needs_the_license(server, monkeypatch):
    name = add(monkeypatch, "good.onnx", sha256=None, accept=True)
    with pytest.raises(WorkbenchError, match="--accept-license"):
        zoo.pull(name, mirror=server.base)
    zoo.pull(name, mirror=server.base, accept_license=True)
    assert (zoo.cache_dir() / name / "sha256.first-download").read_text().strip() == \
        hashlib.sha256(BODY).hexdigest()


@pytest.mark.slow
def test_the_real_sface_entry_through_the_cli_checks_size(server, tmp_path):
    proc = wb("models", "pull", "sface", "--mirror", server.base, check=False)
    assert proc.returncode == 1 and "not 24227283; nothing kept" in proc.stderr  # the mirror served junk
    assert server.hits[0][0] == "/face_recognition_sface_2021dec.onnx"
    missing = wb("embed", "--model", "sface", "-w", str(tmp_path / "ws"), check=False)
    assert missing.returncode == 1 and "wb models pull sface" in missing.stderr


def test_yunet_ships_and_a_pack_in_insightfaces_cache_is_used_in_place(server, tmp_path):
    assert DetectorSpec.parse("yunet").path.endswith("faces/models/yunet_s_640_640.onnx")
    pack = tmp_path / "home" / ".insightface" / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    shutil.copy(shared_model("mobilefacenet_128d.onnx"), pack / "w600k_mbf.onnx")
    shutil.copy(shared_model("scrfd_500m_kps.onnx"), pack / "det_500m.onnx")
    assert ModelSpec.parse("buffalo_l") == ModelSpec("onnx", str(pack / "w600k_mbf.onnx"))
    assert DetectorSpec.parse("buffalo_l") == DetectorSpec("scrfd", str(pack / "det_500m.onnx"))


@pytest.mark.slow
def test_a_new_workspace_ingests_with_the_shipped_yunet_and_an_old_one_keeps_dlib(tmp_path, monkeypatch):
    from tests.conftest import SHARED
    from tests.helpers import manifest_rows, wb_json

    people = SHARED / "data" / "celeba200"
    if not people.is_dir():
        pytest.skip(f"real faces not found at {people}")
    monkeypatch.delenv("WB_YUNET_MODEL", raising=False)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(sorted(next(p for p in sorted(people.iterdir()) if p.is_dir()).iterdir())[:4]):
        shutil.copy(image, photos / f"{i}.jpg")
    new = wb_json("ingest", str(photos), "-w", str(tmp_path / "new"))
    assert new["faces"] >= 4 and new["hints"] == []
    shipped = DetectorSpec.parse("yunet").key
    assert manifest_rows(tmp_path / "new", "SELECT DISTINCT detector FROM wb_faces") == [(shipped,)]
    old = tmp_path / "old"
    wb_json("ingest", str(photos / "0.jpg"), "-w", str(old), "--detector", "dlib")
    again = wb_json("ingest", str(photos), "-w", str(old))
    assert any("keeps dlib-" in hint for hint in again["hints"])
    assert {d for (d,) in manifest_rows(old, "SELECT DISTINCT detector FROM wb_faces")} == \
        {DetectorSpec.parse("dlib").key}
