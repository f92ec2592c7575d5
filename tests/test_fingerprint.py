"""Model fingerprints key every cache: they must change with any byte of the weights, and only then."""

import hashlib
import json
import shutil
import struct
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import t3s.fingerprint as fingerprint
from conftest import build_tiny_model

MIB = 1 << 20


def _data_offset(path: Path, name: str) -> tuple[int, int]:
    """(file offset of the first byte of tensor `name`, file size) from the safetensors header."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    start, _ = json.loads(raw[8 : 8 + header_len])[name]["data_offsets"]
    return 8 + header_len + start, len(raw)


def test_one_changed_weight_outside_any_sampled_window_changes_the_fingerprint(
    tokenizer, tmp_path: Path
) -> None:
    model = build_tiny_model(tokenizer, tmp_path / "m")
    weights = model / "model.safetensors"
    before = fingerprint.model_fingerprint(model)
    tensors = load_file(weights)
    name = "model.embed_tokens.weight"
    row = 8000  # 8000 rows x 64 floats x 4 bytes ~ 2 MB into the 12.6 MB embedding
    offset, size = _data_offset(weights, name)
    at = offset + row * tensors[name].shape[1] * 4
    # The old scheme hashed [0, 1 MiB), 1 MiB around the middle and the last 1 MiB: this byte is in none.
    assert size > 3 * MIB and MIB < at < size // 2 - MIB
    tensors[name][row, 0] += 1e-3
    save_file(tensors, weights, metadata={"format": "pt"})
    assert weights.stat().st_size == size
    assert fingerprint.model_fingerprint(model) != before


def test_same_content_elsewhere_has_the_same_fingerprint(tiny_model: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    assert fingerprint.model_fingerprint(copy) == fingerprint.model_fingerprint(tiny_model)
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("64", "65", 1))
    assert fingerprint.model_fingerprint(copy) != fingerprint.model_fingerprint(tiny_model)


def _count_hashes(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = hashlib.sha256

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(fingerprint.hashlib, "sha256", counting)
    return calls


def test_file_hash_is_memoised_until_the_file_changes(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * (3 * MIB))
    monkeypatch.setattr(fingerprint, "_RACY_NS", 0)
    time.sleep(0.05)  # the file's ctime is now older than the hash, by more than a clock tick
    expected = hashlib.sha256(b"a" * (3 * MIB)).hexdigest()[:16]
    calls = _count_hashes(monkeypatch)
    first = fingerprint.file_digest(path)
    assert first == expected
    assert fingerprint.file_digest(path) == first and len(calls) == 1
    time.sleep(0.05)
    with open(path, "r+b") as fh:  # same size, same inode, one byte different
        fh.seek(2 * MIB)
        fh.write(b"b")
    assert fingerprint.file_digest(path) != first and len(calls) == 2


def test_a_file_written_just_before_hashing_is_not_memoised(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(torch.arange(1000).numpy().tobytes())
    calls = _count_hashes(monkeypatch)
    assert fingerprint.file_digest(path) == fingerprint.file_digest(path)
    assert len(calls) == 2


def test_each_shard_hash_stays_with_its_name(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for k in range(3):
        save_file({"w": torch.full((4,), float(k))}, model / f"model-{k}.safetensors")
    before = fingerprint.model_fingerprint(model)
    for k in (0, 2):  # swap two shards' contents: the set of hashes stays the same
        save_file({"w": torch.full((4,), float(2 - k))}, model / f"model-{k}.safetensors")
    assert fingerprint.model_fingerprint(model) != before
