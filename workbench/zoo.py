"""Named models: a small registry, fetched only when asked (`wb models pull NAME`), cached, checked.

Every peer in the field hands users a good model by name (InsightFace's
`buffalo_l`, OpenCV's zoo, deepface); here a name works wherever `--model` or
`--detector` takes a spec once the file is here. Nothing is ever downloaded
implicitly: a missing model is a one-line error naming the URL and the path to
put the file at, for machines without a network.

A download streams into `NAME/FILE.part` in the cache (`$WB_MODELS_CACHE`,
default `~/.cache/uir-workbench/models`), resumes from where a cut transfer
stopped (an HTTP Range request), is checked against the registry's SHA-256 and
size, and only then renamed to its final name, so a final name always holds a
whole, checked file. Packs without a published hash (InsightFace's) record the
hash of their first download and refuse a later one that differs. Redirects
are followed hop by hop, only to the hosts the entry names (GitHub releases
redirect to its storage host); `$WB_MODELS_MIRROR` (or `--mirror`) fetches the
same file names from a mirror of the team's own, and then only from its host.
Models whose license restricts use (InsightFace's packs: non-commercial
research) are downloaded only with `--accept-license`. YuNet ships inside the
package (Apache-2.0).
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from workbench.errors import WorkbenchError
from workbench.weights import sha256_of

PACKAGED = Path(__file__).parent / "faces" / "models"
INSIGHTFACE_CACHE = Path("~/.insightface/models")
MAX_REDIRECTS = 5
CHUNK = 1 << 20
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class ZooModel:
    """One registry entry."""

    name: str
    task: str  # recognition | detection | pack (detector and recogniser)
    url: str
    file: str  # the file's name in the cache (a pack: its zip, unpacked into NAME/)
    size: int | None
    sha256: str | None  # None: recorded at the first download, checked afterwards
    license: str
    source: str
    hosts: tuple[str, ...]  # hosts a download may reach, redirects included
    norm: tuple[float, float] | None = None  # recognisers: input (mean, std) on RGB 0-255
    accept: bool = False  # the license must be accepted with --accept-license
    packaged: bool = False  # ships inside the package


GITHUB = ("github.com", "objects.githubusercontent.com", "release-assets.githubusercontent.com",
          "raw.githubusercontent.com", "media.githubusercontent.com")
INSIGHTFACE_LICENSE = "non-commercial research only (InsightFace)"
REGISTRY: dict[str, ZooModel] = {m.name: m for m in (
    ZooModel("yunet", "detection",
             "https://github.com/ShiqiYu/libfacedetection.train/raw/master/onnx/yunet_s_640_640.onnx",
             "yunet_s_640_640.onnx", 232_589,
             "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4", "Apache-2.0",
             "ShiqiYu/libfacedetection.train", GITHUB, packaged=True),
    # OpenCV's FaceRecognizerSF feeds it RGB pixels as they are (blobFromImage, swapRB, no scaling)
    ZooModel("sface", "recognition",
             "https://github.com/opencv/opencv_zoo/raw/main/models/face_recognition_sface/"
             "face_recognition_sface_2021dec.onnx",
             "face_recognition_sface_2021dec.onnx", 24_227_283,
             "f6abbfff9575e3041db692c1e29d782e995191888477fd59ebc81202d99fc63b", "Apache-2.0",
             "opencv/opencv_zoo", GITHUB, norm=(0.0, 1.0)),
    *(ZooModel(pack, "pack", f"https://github.com/deepinsight/insightface/releases/download/v0.7/{pack}.zip",
               f"{pack}.zip", None, None, INSIGHTFACE_LICENSE, "deepinsight/insightface", GITHUB, accept=True)
      for pack in ("buffalo_l", "buffalo_s", "antelopev2")),
)}


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "uir-workbench" / "models"
    return Path(os.environ.get("WB_MODELS_CACHE", str(default))).expanduser()


def entry(name: str) -> ZooModel:
    if name not in REGISTRY:
        raise WorkbenchError(f"no model named {name!r}; see `wb models list` ({', '.join(REGISTRY)})")
    return REGISTRY[name]


def local_path(model: ZooModel) -> Path | None:
    """Where the model is here: the package, InsightFace's own cache (packs, used in place), or
    ours; None when it has not been pulled."""
    if model.packaged:
        return PACKAGED / model.file
    if model.task == "pack":
        for folder in (INSIGHTFACE_CACHE.expanduser() / model.name, cache_dir() / model.name):
            if folder.is_dir() and any(folder.glob("*.onnx")):
                return folder
        return None
    path = cache_dir() / model.name / model.file
    return path if path.is_file() else None


def resolve(name: str) -> Path:
    """The model's file (or pack folder), or a one-line error saying how to get it."""
    model = entry(name)
    path = local_path(model)
    if path is None:
        where = cache_dir() / model.name / ("" if model.task == "pack" else model.file)
        raise WorkbenchError(f"model {name} is not here: `wb models pull {name}`"
                             f"{' --accept-license' if model.accept else ''}, or put {model.url} at {where}")
    return path


@dataclass(frozen=True)
class Listed:
    name: str
    task: str
    size: str
    license: str
    source: str
    here: str


def listing() -> list[Listed]:
    """`wb models list`."""
    out = []
    for m in REGISTRY.values():
        path = local_path(m)
        size = f"{m.size / 2**20:.1f} MB" if m.size else "?"
        out.append(Listed(m.name, m.task, size, m.license, m.source,
                          "packaged" if m.packaged else str(path) if path else "no"))
    return out


def pull(name: str, *, accept_license: bool = False, mirror: str | None = None,
         progress: ProgressFn | None = None) -> Path:
    """Download, resume, check and place one model; its path."""
    model = entry(name)
    if (here := local_path(model)) is not None:
        return here
    if model.accept and not accept_license:
        raise WorkbenchError(f"{name}: {model.license}. Read it at {model.url.rsplit('/releases', 1)[0]}; "
                             "pull it with --accept-license if your use is allowed")
    mirror = mirror or os.environ.get("WB_MODELS_MIRROR")
    url = urljoin(mirror.rstrip("/") + "/", model.file) if mirror else model.url
    hosts = (urlsplit(url).hostname or "",) if mirror else model.hosts
    folder = cache_dir() / model.name
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / (model.file + ".part")
    _download(url, part, hosts, model.size, progress)
    got = part.stat().st_size
    if model.size is not None and got != model.size:
        part.unlink()
        raise WorkbenchError(f"{name}: {url} gave {got} bytes, not {model.size}; nothing kept")
    digest = sha256_of(part)
    expected = model.sha256 or _recorded(folder)
    if expected is not None and digest != expected:
        part.unlink()
        raise WorkbenchError(f"{name}: the download's SHA-256 is {digest[:16]}..., not {expected[:16]}...; "
                             "nothing kept (a changed or tampered file)")
    if model.sha256 is None:
        (folder / "sha256.first-download").write_text(digest + "\n")
    if model.task == "pack":
        _unpack(part, folder)
        part.unlink()
        return folder
    final = folder / model.file
    os.replace(part, final)
    return final


def _recorded(folder: Path) -> str | None:
    path = folder / "sha256.first-download"
    return path.read_text().strip() if path.is_file() else None


def _download(url: str, part: Path, hosts: tuple[str, ...], size: int | None,
              progress: ProgressFn | None) -> None:
    """Stream `url` into `part`, resuming from its current length; redirects only to `hosts`."""
    import httpx

    for _ in range(MAX_REDIRECTS + 1):
        host = urlsplit(url).hostname or ""
        if urlsplit(url).scheme not in ("http", "https") or host not in hosts:
            raise WorkbenchError(f"refused to fetch {url}: only {', '.join(hosts)} may serve this model")
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with httpx.stream("GET", url, headers=headers, follow_redirects=False,
                              timeout=httpx.Timeout(30.0, connect=10.0)) as response:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                if response.status_code == 416 and have:  # already whole
                    return
                if response.status_code not in (200, 206):
                    raise WorkbenchError(f"{url}: HTTP {response.status_code}; nothing kept under the "
                                         "model's name")
                mode = "ab" if response.status_code == 206 else "wb"  # a server may ignore Range
                done = have if mode == "ab" else 0
                total = size or (done + int(response.headers.get("content-length") or 0))
                with open(part, mode) as handle:
                    for block in response.iter_bytes():  # as received: a cut keeps what came
                        handle.write(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
                return
        except httpx.HTTPError as exc:
            raise WorkbenchError(f"{url}: {type(exc).__name__}: {exc}; run the same pull again to resume "
                                 f"(kept so far: {part})") from None
    raise WorkbenchError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _unpack(archive: Path, folder: Path) -> None:
    """A pack's zip into `folder`: only its .onnx files, flattened (never a path outside it)."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                name = Path(info.filename).name
                if name.endswith(".onnx") and not info.is_dir():
                    with zipped.open(info) as src, open(folder / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
    except zipfile.BadZipFile:
        raise WorkbenchError(f"{archive.name} is not a zip archive; nothing kept") from None
