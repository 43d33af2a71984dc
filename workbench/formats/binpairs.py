"""InsightFace verification pairs (`lfw.bin`, `cfp_fp.bin`, `agedb_30.bin`, ...).

A `.bin` file is a pickle of `(bins, issame_list)`: 2N encoded images, pair i
being bins[2i] and bins[2i+1]. Old files are Python-2 pickles of JPEG byte
strings; newer ones hold numpy uint8 arrays. Pickle can run code, and numpy's
own unpickling trusts its input (a crafted dtype state crashes the process), so
no numpy or other callable is ever reached: the few globals such files name are
answered by stand-ins here that check every value (dtype codes, shapes, byte
counts) and build plain arrays with `np.frombuffer`. Anything else is refused.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.errors import WorkbenchError
from workbench.formats.files import read_regular_file

MAX_BYTES = 8 << 30  # the largest InsightFace .bin files are a few hundred MB
MAX_ELEMENTS = 1 << 31
_CODES = {"u1", "b1", "i1", "i2", "i4", "i8", "u2", "u4", "u8", "?"}


class PairsError(WorkbenchError):
    """A `.bin` file that is not a verification-pairs pickle."""


def _refuse(what: str) -> PairsError:
    return PairsError(f"refusing {what}: not a verification-pairs file")


class _Dtype:
    """Stands in for `numpy.dtype(code, align, copy)` followed by its BUILD state."""

    def __init__(self, code: object, align: object = False, copy: object = True) -> None:
        if not isinstance(code, str) or code not in _CODES:
            raise _refuse(f"dtype {code!r}")
        self.code, self.order = code, "|"

    def __setstate__(self, state: object) -> None:
        if not (isinstance(state, tuple) and len(state) >= 2 and state[1] in ("|", "<", ">", "=")):
            raise _refuse("a dtype state")
        self.order = state[1]

    def numpy(self) -> np.dtype:
        return np.dtype(self.code if self.order in ("|", "=") else self.order + self.code)


class _Ndarray:
    """Stands in for the `numpy.ndarray` class named in a pickle."""


class _Array:
    """Stands in for `_reconstruct(ndarray, (0,), b'b')`; its BUILD state fills `array`."""

    array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise _refuse("an array state")
        _, shape, dtype, fortran, raw = state
        if not (isinstance(shape, tuple) and all(isinstance(s, int) and s >= 0 for s in shape)
                and isinstance(dtype, _Dtype) and isinstance(fortran, bool)
                and isinstance(raw, bytes | bytearray)):
            raise _refuse("an array state")
        kind = dtype.numpy()
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count > MAX_ELEMENTS or len(raw) != count * kind.itemsize:
            raise _refuse(f"an array of shape {shape} with {len(raw)} bytes")
        self.array = np.frombuffer(bytes(raw), kind).reshape(shape, order="F" if fortran else "C")


def _reconstruct(subtype: object, shape: object, typecode: object) -> _Array:
    if subtype is not _Ndarray:
        raise _refuse("an array of another class")
    return _Array()


def _scalar(dtype: object, data: object) -> np.generic:
    if not isinstance(dtype, _Dtype) or not isinstance(data, bytes | bytearray):
        raise _refuse("a scalar")
    kind = dtype.numpy()
    if len(data) != kind.itemsize:
        raise _refuse("a scalar of the wrong size")
    return np.frombuffer(bytes(data), kind)[0]


def _encode(text: object, encoding: object = "utf-8") -> bytes:
    """How Python 3 pickles bytes at protocol <= 2: `_codecs.encode(str, 'latin1')`."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _refuse("a codec call")
    return text.encode("latin1")


_STAND_INS: dict[tuple[str, str], object] = {
    **{(module, "_reconstruct"): _reconstruct for module in ("numpy.core.multiarray",
                                                            "numpy._core.multiarray")},
    **{(module, "scalar"): _scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): _Ndarray,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _encode,
}


def _real(value: object) -> object:
    """Stand-in arrays replaced by the arrays they built."""
    if isinstance(value, _Array):
        if value.array is None:
            raise _refuse("an array without data")
        return value.array
    if isinstance(value, list | tuple):
        return type(value)(_real(v) for v in value)
    if isinstance(value, _Dtype | _Ndarray) or value is _Ndarray:
        raise _refuse("a bare numpy type")
    return value


@dataclass(frozen=True)
class Pairs:
    images: list[bytes | np.ndarray]  # 2N encoded images (bytes) or decoded HxWx3 arrays
    issame: np.ndarray  # N booleans
    folds: np.ndarray | None = None  # N fold indices, when known

    def __len__(self) -> int:
        return len(self.issame)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _STAND_INS:
            return _STAND_INS[(module, name)]
        raise PairsError(f"refusing to unpickle {module}.{name}: not a verification-pairs file")


def read_bin(path: str | os.PathLike[str]) -> Pairs:
    """Load a `.bin` safely and check its shape: 2N images and N booleans."""
    path = Path(path)
    try:
        raw = read_regular_file(path, MAX_BYTES)
    except OSError as exc:
        raise PairsError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise PairsError(f"cannot read {path}: {exc}") from None
    try:
        obj = _real(_RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load())
    except PairsError:
        raise
    except Exception as exc:
        raise PairsError(f"{path} is not a verification-pairs pickle ({type(exc).__name__})") from None
    if not (isinstance(obj, tuple | list) and len(obj) == 2):
        raise PairsError(f"{path}: expected (bins, issame_list), got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, list | tuple) or not all(_is_image(b) for b in bins):
        raise PairsError(f"{path}: bins must be a list of encoded images or uint8 arrays")
    issame_arr = np.asarray(issame)
    if issame_arr.ndim != 1 or issame_arr.dtype.kind not in "bi" or set(np.unique(issame_arr)) - {0, 1}:
        raise PairsError(f"{path}: issame_list must be a list of booleans")
    if len(bins) != 2 * len(issame_arr):
        raise PairsError(f"{path}: {len(bins)} images for {len(issame_arr)} pairs (need 2 per pair)")
    images = [b.tobytes() if isinstance(b, np.ndarray) and b.ndim == 1 else b for b in bins]
    return Pairs(images=images, issame=issame_arr.astype(bool))


def _is_image(value: object) -> bool:
    if isinstance(value, bytes | bytearray):
        return True
    return isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim in (1, 3)


def write_bin(path: str | os.PathLike[str], images: list[bytes], issame: np.ndarray | list[bool]) -> None:
    """Write pairs as InsightFace does (bytes images, list of bools)."""
    if len(images) != 2 * len(issame):
        raise ValueError("need two images per pair")
    with open(path, "wb") as handle:
        pickle.dump((list(images), [bool(v) for v in issame]), handle, protocol=4)
