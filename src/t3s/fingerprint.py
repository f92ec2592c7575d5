"""Content fingerprints: a stage is skipped only when the fingerprints of its inputs match.

Weight files are hashed in full (SHA-256, ~1 GB/s per core with SHA-NI): any changed byte, e.g. one
layer of a LoRA merge or a partial fine-tune, changes the fingerprint that keys the profile cache,
stored evaluation samples and stage skipping. Each file's hash is kept in memory for the process,
keyed by its path, device, inode, size, mtime and ctime, so one run hashes an unchanged multi-GB
shard once. Nothing is cached on disk, where a copy that preserves timestamps could revive a stale hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_BLOCK = 1 << 22
# A file whose timestamps are this recent when hashing starts could be rewritten within the same
# filesystem clock tick (coarse clocks tick every few ms; FAT and some network mounts every 1-2 s)
# without its stat changing, so its hash is not memoised (git's "racy clean" rule).
_RACY_NS = 3_000_000_000
_memo: dict[tuple[Any, ...], str] = {}


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def _stat_key(path: Path) -> tuple[Any, ...]:
    st = path.stat()
    return (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's whole content, streamed; memoised while the file's stat is unchanged."""
    key = _stat_key(path)
    if (known := _memo.get(key)) is not None:
        return known
    start = time.time_ns()
    h = hashlib.sha256()
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    value = h.hexdigest()[:16]
    # Memoise only a file that did not change while it was read and is not racily recent.
    mtime_ns, ctime_ns = key[-2:]
    if _stat_key(path) == key and max(mtime_ns, ctime_ns) < start - _RACY_NS:
        _memo[key] = value
    return value


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def model_fingerprint(model: str | os.PathLike[str]) -> str:
    """Fingerprint of a checkpoint directory (config and weights) or, for a hub id, of its name."""
    path = Path(model)
    if not path.is_dir():
        return digest("hub", str(model))
    parts: list[Any] = []
    weights: list[Path] = []
    for f in sorted(path.iterdir()):
        if f.name in ("config.json", "adapter_config.json"):
            parts.append((f.name, f.read_text(encoding="utf-8")))
        elif f.suffix in _WEIGHT_SUFFIXES and f.is_file():
            weights.append(f)
    # hashlib releases the GIL: shards hash in parallel, up to one per core.
    with ThreadPoolExecutor(max_workers=max(1, min(len(weights), os.cpu_count() or 1))) as pool:
        parts.extend(zip((f.name for f in weights), pool.map(file_digest, weights), strict=True))
    return digest("dir", parts)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Fingerprint of everything that decides token ids: vocabulary, merges, specials, chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return digest(vocab, tokenizer.chat_template, tokenizer.all_special_tokens, type(tokenizer).__name__)
