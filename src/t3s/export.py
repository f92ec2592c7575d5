"""Export a masked dataset for the trainer a user already runs, after checking it is consistent.

The masks directory is already what TRL's SFTTrainer, axolotl and LLaMA-Factory take for
pre-tokenized data: `input_ids` plus `labels` with -100 where a token is not trained; `loss_mask`
is the same information as 0/1 aligned with the tokens (loss_mask[i] = 1 iff labels[i] ==
input_ids[i]). verl's SFT trainer applies its `loss_mask[:, :-1]` to the loss of predicting
token i + 1 from position i, so its mask is ours shifted left by one; `--format verl` writes it so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from t3s.errors import T3SError
from t3s.io import atomic_dir, write_json
from t3s.masks import labels_from_mask, response_mask
from t3s.selection import MASKS_FILE, MASKS_HF, read_masks

Format = Literal["hf", "verl", "jsonl"]

USAGE = {
    "hf": """\
# TRL (any trainer taking input_ids + labels with -100 works the same way)
from datasets import load_from_disk
from trl import SFTConfig, SFTTrainer
dataset = load_from_disk("{out}")
trainer = SFTTrainer(model=MODEL, train_dataset=dataset,
                     args=SFTConfig(output_dir="out", max_length=None))  # keep every token: no re-truncation
trainer.train()
""",
    "verl": """\
# verl: pre-tokenized rows with input_ids, attention_mask, position_ids and verl's shifted loss_mask
# (loss_mask[i] = 1 trains the prediction of input_ids[i + 1]); read them with a small custom
# dataset class (data.custom_cls) that returns these columns as tensors, padded on the right.
""",
    "jsonl": """\
# One JSON object per line: {{"input_ids": [...], "labels": [...]}} (labels -100 where not trained),
# the pre-tokenized format of axolotl and LLaMA-Factory.
""",
}


def check_masks(table: pa.Table, where: str) -> dict[str, int]:
    """Every row: equal lengths, labels = input_ids exactly where loss_mask is 1, nothing outside the response."""
    trained = 0
    for row in table.to_pylist():
        ids, labels, mask = (np.asarray(row[c], dtype=np.int64) for c in ("input_ids", "labels", "loss_mask"))
        if not len(ids) == len(labels) == len(mask):
            raise T3SError(
                f"{where}: example {row['id']!r} has input_ids, labels and loss_mask of different lengths"
            )
        if not np.array_equal(labels, labels_from_mask(ids, mask == 1)):
            raise T3SError(f"{where}: example {row['id']!r} has labels that disagree with loss_mask")
        if mask[~response_mask(len(ids), row["response_start"], row["response_end"])].any():
            raise T3SError(f"{where}: example {row['id']!r} trains a token outside its response")
        trained += int(mask.sum())
    return {"examples": table.num_rows, "trained_tokens": trained}


def verl_loss_mask(loss_mask: list[int]) -> list[int]:
    """Our token-aligned mask in verl's convention: position i gates the prediction of token i + 1.

    >>> verl_loss_mask([0, 0, 1, 1])  # tokens 2 and 3 trained: verl gates them at positions 1 and 2
    [0, 1, 1, 0]
    """
    return [*loss_mask[1:], 0]


def export_masks(masks_dir: str | Path, out: str | Path, fmt: Format) -> dict[str, Any]:
    masks_dir, out = Path(masks_dir), Path(out)
    table = read_masks(masks_dir)
    summary = check_masks(table, str(masks_dir / MASKS_FILE))
    with atomic_dir(out) as tmp:
        if fmt == "hf":
            shutil.copytree(masks_dir / MASKS_HF, tmp, dirs_exist_ok=True)
        elif fmt == "verl":
            ids = table.column("input_ids").to_pylist()
            verl = pa.table(
                {
                    "input_ids": table.column("input_ids"),
                    "attention_mask": [[1] * len(i) for i in ids],
                    "position_ids": [list(range(len(i))) for i in ids],
                    "loss_mask": [verl_loss_mask(m) for m in table.column("loss_mask").to_pylist()],
                }
            )
            pq.write_table(verl, tmp / "data.parquet")
        elif fmt == "jsonl":
            with open(tmp / "data.jsonl", "w", encoding="utf-8") as fh:
                for row in table.select(["input_ids", "labels"]).to_pylist():
                    fh.write(json.dumps(row) + "\n")
        else:
            raise T3SError(f"--format {fmt!r}: use hf, verl or jsonl")
        (tmp / "USAGE.md").write_text(USAGE[fmt].format(out=out), encoding="utf-8")
        write_json(tmp / "export.json", {"source": str(masks_dir), "format": fmt, **summary})
    return summary
