"""Content fingerprints: a stage is skipped only when the fingerprints of its inputs match."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_SAMPLE = 1 << 20


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def _sampled_file_hash(path: Path) -> str:
    """Hash of a weight file's size and three 1 MiB windows: exact for headers, cheap for 16 GB shards."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        for offset in sorted({0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}):
            fh.seek(offset)
            h.update(fh.read(_SAMPLE))
    return h.hexdigest()[:16]


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def model_fingerprint(model: str | os.PathLike[str]) -> str:
    """Fingerprint of a checkpoint directory (config and weights) or, for a hub id, of its name."""
    path = Path(model)
    if not path.is_dir():
        return digest("hub", str(model))
    parts: list[Any] = []
    for f in sorted(path.iterdir()):
        if f.name in ("config.json", "adapter_config.json"):
            parts.append((f.name, f.read_text(encoding="utf-8")))
        elif f.suffix in _WEIGHT_SUFFIXES and f.is_file():
            parts.append((f.name, _sampled_file_hash(f)))
    return digest("dir", parts)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Fingerprint of everything that decides token ids: vocabulary, merges, specials, chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return digest(vocab, tokenizer.chat_template, tokenizer.all_special_tokens, type(tokenizer).__name__)
