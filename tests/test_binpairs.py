"""Verification `.bin` pairs: safe loading of old and new pickles, writing, generation."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest

from workbench.formats.binpairs import PairsError, read_bin, write_bin
from workbench.labeled.pairs import generate_pairs

JPEGS = [b"\xff\xd8\xff" + bytes([i]) * 20 + b"\xff\xd9" for i in range(4)]


def test_round_trip(tmp_path):
    write_bin(tmp_path / "p.bin", JPEGS, [True, False])
    pairs = read_bin(tmp_path / "p.bin")
    assert pairs.images == JPEGS and pairs.issame.tolist() == [True, False]


def py2_pickle(images: list[bytes], issame: list[bool]) -> bytes:
    """Opcodes as Python 2's cPickle wrote lfw.bin: protocol 2, SHORT_BINSTRING images."""
    out = b"\x80\x02(]q\x00("
    for image in images:
        out += b"U" + struct.pack("<B", len(image)) + image
    out += b"e]q\x01(" + b"".join(b"\x88" if v else b"\x89" for v in issame) + b"et."
    return out


def test_python2_pickle_of_jpeg_strings(tmp_path):
    (tmp_path / "old.bin").write_bytes(py2_pickle(JPEGS, [False, True]))
    pairs = read_bin(tmp_path / "old.bin")
    assert pairs.images == JPEGS and pairs.issame.tolist() == [False, True]


def test_numpy_uint8_arrays(tmp_path):
    arrays = [np.frombuffer(j, np.uint8) for j in JPEGS]
    with open(tmp_path / "new.bin", "wb") as handle:
        pickle.dump((arrays, np.array([True, True])), handle, protocol=4)
    pairs = read_bin(tmp_path / "new.bin")
    assert pairs.images == JPEGS and pairs.issame.all()


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_code_in_the_pickle_is_refused(tmp_path):
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([Exploit()], [True])))
    with pytest.raises(PairsError, match="refusing to unpickle"):
        read_bin(tmp_path / "evil.bin")


@pytest.mark.parametrize("content, message", [
    ((JPEGS[:3], [True, False]), "need 2 per pair"),
    (({"a": 1}, [True]), "bins must be a list"),
    ((JPEGS, ["yes", "no"]), "booleans"),
    ([JPEGS], "expected (bins, issame_list)"),
])
def test_unexpected_structure(tmp_path, content, message):
    (tmp_path / "x.bin").write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(PairsError) as info:
        read_bin(tmp_path / "x.bin")
    assert message in str(info.value)


def test_not_a_pickle(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\xff\xd8 plain jpeg")
    with pytest.raises(PairsError, match="not a verification-pairs pickle"):
        read_bin(tmp_path / "x.bin")


def test_generated_pairs_are_lfw_style():
    labels = np.repeat(np.arange(60), 4)
    left, right, fold = generate_pairs(labels, n_folds=10, pairs_per_fold=20, seed=3)
    issame = labels[left] == labels[right]
    assert len(left) == 200
    for f in range(10):
        in_fold = fold == f
        assert issame[in_fold].sum() == 10 and (~issame[in_fold]).sum() == 10
        ids = set(labels[left[in_fold]]) | set(labels[right[in_fold]])
        for g in range(f + 1, 10):
            other = set(labels[left[fold == g]]) | set(labels[right[fold == g]])
            assert not ids & other, "identities must not cross folds"
    assert len({(a, b) for a, b in zip(left, right, strict=True)}) == 200
    again = generate_pairs(labels, n_folds=10, pairs_per_fold=20, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((left, right, fold), again, strict=True))
