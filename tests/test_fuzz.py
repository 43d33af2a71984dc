"""Bounded fuzzing of the parsers that read hostile input: RecordIO, `.bin` pairs, image decoding,
and the crawler's HTML, URL and header parsing. Each property is "a clean outcome or the
parser's own error, never a crash". The suite runs a short pass; a long one:

    WB_FUZZ_EXAMPLES=20000 python -m pytest -q tests/test_fuzz.py
"""

from __future__ import annotations

import io
import os
import pickle
from urllib.parse import urlsplit

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import noise_image
from workbench.crawl.crawler import MAX_RETRY_AFTER, _retry_after
from workbench.crawl.html import parse_page
from workbench.crawl.urls import absolute_url
from workbench.errors import WorkbenchError
from workbench.formats.binpairs import PairsError, read_bin
from workbench.formats.labeled import open_source
from workbench.formats.recordio import write_insightface_rec
from workbench.ingest.decode import Rejected, decode_image

EXAMPLES = int(os.environ.get("WB_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def encoded(fmt: str, seed: int) -> bytes:
    buf = io.BytesIO()
    noise_image(seed, (64, 64)).save(buf, format=fmt)
    return buf.getvalue()


SEEDS = {
    "jpeg": encoded("JPEG", 1), "png": encoded("PNG", 2), "gif": encoded("GIF", 3),
    "tiff": encoded("TIFF", 4), "bmp": encoded("BMP", 5), "webp": encoded("WEBP", 6),
    "bin": pickle.dumps(([np.frombuffer(encoded("JPEG", 7), np.uint8)] * 2, np.array([True])), protocol=2),
    "bin-old": pickle.dumps(([encoded("JPEG", 8)] * 2, [False]), protocol=2),
}


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """Byte flips, a cut, an insertion: the edits a damaged or crafted file shows."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(max_size=64))
    return bytes(data)


@FUZZ
@given(st.sampled_from(["jpeg", "png", "gif", "tiff", "bmp", "webp"]).flatmap(
    lambda k: mutated(SEEDS[k])))
def test_image_decoding(data):
    try:
        decoded = decode_image(data)
    except Rejected:
        return
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.ndim == 3 and decoded.rgb.shape[2] == 3


@FUZZ
@given(st.sampled_from(["bin", "bin-old"]).flatmap(lambda k: mutated(SEEDS[k])))
def test_bin_pairs(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bin") / "x.bin"
    path.write_bytes(data)
    try:
        pairs = read_bin(path)
    except PairsError:
        return
    assert len(pairs.images) == 2 * len(pairs.issame)


@pytest.fixture(scope="module")
def rec_seed(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("rec")
    write_insightface_rec(folder / "train.rec", [(0, encoded("JPEG", 10)), (0, encoded("JPEG", 11)),
                                                 (1, encoded("JPEG", 12))])
    return {name: (folder / name).read_bytes() for name in ("train.rec", "train.idx", "property")}


@FUZZ
@given(data=st.data())
def test_recordio_sets(tmp_path_factory, rec_seed, data):
    folder = tmp_path_factory.mktemp("recfuzz")
    target = data.draw(st.sampled_from(sorted(rec_seed)))
    for name, content in rec_seed.items():
        (folder / name).write_bytes(data.draw(mutated(content)) if name == target else content)
    try:
        source = open_source(folder, "rec", image_column="image", label_column="label", cache_dir=None)
    except WorkbenchError:
        return
    try:
        for sample in source.stream():
            assert (sample.label is None) == (sample.reason is not None)
            assert sample.label is None or 0 <= sample.label < max(len(source.identities), 1 << 21)
    except WorkbenchError:
        pass
    finally:
        source.close()


def parses(url: str) -> bool:
    parts = urlsplit(url)
    parts.port  # noqa: B018 (raises ValueError when malformed)
    return True


@FUZZ
@given(st.lists(st.one_of(st.text(max_size=40), st.sampled_from(
    ["http://[bad", "http://x:99999/", "//[::1", "javascript:alert(1)", "\x00", "http://a b/",
     "HTTP://Example.com:80/%zz"])), max_size=6), st.sampled_from(["img src", "a href", "base href",
                                                                   "link rel=license href"]))
def test_html_links(values, attribute):
    html = "".join(f'<{attribute}="{v}">' for v in values)
    links = parse_page(html, "http://127.0.0.1/page.html")
    assert all(parses(u) for u in links.images + links.pages)


@FUZZ
@given(st.one_of(st.text(max_size=60), st.sampled_from(
    ["Sun, 29 Nov 2026 07:00:00 -0000", "Mon, 99 Foo 2026 99:99:99 GMT", "1e308", "-5", "inf", "nan"])))
def test_retry_after_headers(value):
    wait = _retry_after(value)
    assert wait is None or 0 <= wait <= MAX_RETRY_AFTER


@FUZZ
@given(st.text(max_size=60))
def test_redirect_locations(location):
    target = absolute_url("http://127.0.0.1/a/b.html", location)
    assert target is None or parses(target)


HF_FUZZ = settings(FUZZ, max_examples=max(EXAMPLES // 4, 20))


@pytest.fixture(scope="module")
def hf_seed(tmp_path_factory) -> dict[str, tuple[str, bytes]]:
    """Six images as `save_to_disk` writes them (an .arrow file) and as a parquet file."""
    datasets = pytest.importorskip("datasets")
    folder = tmp_path_factory.mktemp("hf")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    images = [{"bytes": encoded("JPEG", 20 + i), "path": None} for i in range(6)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1, 0, 1]}, features=features)
    ds.save_to_disk(str(folder / "disk"))
    ds.to_parquet(str(folder / "train.parquet"))
    arrow = next((folder / "disk").glob("*.arrow"))
    return {"arrow": (arrow.name, arrow.read_bytes()), "parquet": ("train.parquet",
                                                                   (folder / "train.parquet").read_bytes()),
            "disk": ("", b""), "folder": (str(folder / "disk"), b"")}


def _edit(data: bytearray, edits: list[tuple[int, int]]) -> bytearray:
    for at, value in edits:
        data[at] = value
    return data


@HF_FUZZ
@given(data=st.data())
def test_hf_datasets(tmp_path_factory, hf_seed, data):
    """Mutated `.arrow` (its first 2 KB: schema and record-batch lengths, where Arrow once aborted
    the process) and parquet files: samples, reasons or one `WorkbenchError`, never another
    exception or a crash."""
    kind = data.draw(st.sampled_from(["arrow", "parquet"]))
    name, content = hf_seed[kind]
    header = st.lists(st.tuples(st.integers(0, min(2000, len(content) - 1)), st.integers(0, 255)),
                      min_size=1, max_size=3)  # the schema and record-batch metadata
    mutation = mutated(content) if kind == "parquet" else st.one_of(mutated(content), header.map(
        lambda edits: bytes(_edit(bytearray(content), edits))))
    folder = tmp_path_factory.mktemp("hffuzz")
    if kind == "arrow":
        import shutil

        target = folder / "ds"
        shutil.copytree(hf_seed["folder"][0], target)
        (target / name).write_bytes(data.draw(mutation))
    else:
        target = folder / name
        target.write_bytes(data.draw(mutation))
    try:
        source = open_source(target, "hf", cache_dir=folder / "cache")
        for sample in source.stream():
            assert (sample.label is None) == (sample.reason is not None) or sample.reason is not None
            if sample.reason is None:
                source.read(sample.locator)
    except WorkbenchError as exc:
        assert "\n" not in str(exc)
