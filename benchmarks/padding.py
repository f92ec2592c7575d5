"""Share of padding in a run's training micro-batches and profile batches, from its tokens.parquet.

Training (`t3s.training.build_trainer`) draws examples in random order and pads each micro-batch
to its longest example, rounded up to a multiple of 8 (DataCollatorForSeq2Seq); the profile
groups examples longest first under a token budget (`t3s.confidence.batches_by_tokens`). This
replays both on the run's real lengths and prints the padded share of the tokens computed.

    python benchmarks/padding.py RUN_DIR [--micro-batch N] [--batch-tokens 16384] [--epochs 20]

--micro-batch defaults to the run's recipe (manifest.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from t3s.confidence import batches_by_tokens


def training_padding(lengths: np.ndarray, micro_batch: int, epochs: int, multiple: int = 8) -> float:
    """Padded share of micro-batch slots over `epochs` random orders of the examples."""
    rng = np.random.default_rng(0)
    padded = real = 0
    for _ in range(epochs):
        order = rng.permutation(len(lengths))
        for s in range(0, len(order), micro_batch):
            batch = lengths[order[s : s + micro_batch]]
            width = -(-int(batch.max()) // multiple) * multiple
            padded += width * len(batch)
            real += int(batch.sum())
    return 1 - real / padded


def profile_padding(lengths: np.ndarray, max_tokens: int) -> float:
    padded = sum(len(b) * int(lengths[b[0]]) for b in batches_by_tokens(lengths.tolist(), max_tokens))
    return 1 - int(lengths.sum()) / padded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--micro-batch", type=int, default=None)
    ap.add_argument("--batch-tokens", type=int, default=16384, help="the profile's max_batch_tokens")
    ap.add_argument("--epochs", type=int, default=20, help="random orders averaged")
    args = ap.parse_args()
    lengths = np.asarray(
        [len(r) for r in pq.read_table(args.run / "tokens.parquet").column("input_ids").to_pylist()]
    )
    recipe = json.loads((args.run / "manifest.json").read_text())["config"]["recipe"]
    micro = args.micro_batch or recipe["micro_batch_size"]
    print(f"{len(lengths)} examples, {lengths.sum()} tokens; length min {lengths.min()}, "
          f"median {int(np.median(lengths))}, max {lengths.max()}")  # fmt: skip
    print(f"training, micro-batch {micro} (random order, padded to the longest, multiple of 8): "
          f"{training_padding(lengths, micro, args.epochs):.1%} of computed tokens are padding")  # fmt: skip
    print(f"profile, batches of <= {args.batch_tokens} tokens (longest first): "
          f"{profile_padding(lengths, args.batch_tokens):.1%} padding")  # fmt: skip


if __name__ == "__main__":
    main()
