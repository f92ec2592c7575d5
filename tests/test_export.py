"""The masked dataset trains unchanged in TRL's SFTTrainer, and verl's shifted loss_mask means the same."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import arithmetic_rows, write_jsonl
from t3s.data import load_corpus
from t3s.errors import T3SError
from t3s.export import check_masks, export_masks
from t3s.models import load_model
from t3s.selection import SelectOptions, select, write_masks
from t3s.tokens import TokenizeConfig, tokenize_corpus, tokens_table
from t3s.training import TrainRecipe, build_trainer, sft_dataset


@pytest.fixture(scope="module")
def masks(tokenizer, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    items, _ = tokenize_corpus(
        tokenizer, load_corpus(write_jsonl(root / "c.jsonl", arithmetic_rows(8))), TokenizeConfig()
    )
    table = tokens_table(items).drop_columns(["truncated"])
    keep = select(table, SelectOptions(policy="sft"))
    rng = np.random.default_rng(0)
    keep = [k & (rng.random(len(k)) < 0.7) for k in keep]  # an arbitrary mask inside the responses
    write_masks(root / "masks", table, keep, {"policy": "test"})
    return root / "masks"


def test_trl_sft_trainer_trains_the_export_exactly_like_t3s(
    masks, tiny_model, tokenizer, tmp_path: Path
) -> None:
    from datasets import load_from_disk
    from trl import SFTConfig, SFTTrainer

    export_masks(masks, tmp_path / "hf", "hf")
    steps = dict(max_steps=2, learning_rate=1e-2, seed=0, lr_scheduler_type="constant_with_warmup",
                 per_device_train_batch_size=2, gradient_accumulation_steps=2)  # fmt: skip
    trl_model = load_model(str(tiny_model), device=torch.device("cpu"))
    trl = SFTTrainer(
        model=trl_model,
        processing_class=tokenizer,
        train_dataset=load_from_disk(str(tmp_path / "hf")),
        args=SFTConfig(
            output_dir=str(tmp_path / "trl"),
            max_length=None,
            optim="sgd",
            use_cpu=True,
            bf16=False,
            report_to="none",
            save_strategy="no",
            gradient_checkpointing=False,
            **steps,
        ),
    )
    trl.train()

    rows = pq.read_table(masks / "data.parquet").to_pylist()
    from t3s.tokens import TokenizedExample

    items = [TokenizedExample(r["id"], r["input_ids"], r["response_start"], r["response_end"]) for r in rows]
    ours_model = load_model(str(tiny_model), device=torch.device("cpu"))
    recipe = TrainRecipe(steps=2, batch_size=4, micro_batch_size=2, lr=1e-2, optim="sgd", seed=0)
    build_trainer(
        ours_model, tokenizer, sft_dataset(items, [r["labels"] for r in rows]), recipe, tmp_path / "ours"
    ).train()
    for (name, a), b in zip(trl_model.state_dict().items(), ours_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_verl_shifted_mask_gives_the_same_loss(masks, tiny_model, tmp_path: Path) -> None:
    export_masks(masks, tmp_path / "verl", "verl")
    verl = pq.read_table(tmp_path / "verl" / "data.parquet").to_pylist()
    ours = pq.read_table(masks / "data.parquet").to_pylist()
    model = load_model(str(tiny_model), device=torch.device("cpu"))
    for v, o in zip(verl, ours, strict=True):
        ids = torch.tensor([v["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits
            hf_loss = model(input_ids=ids, labels=torch.tensor([o["labels"]])).loss
        # verl's fsdp_sft_trainer: CE(logits[:, :-1], input_ids[:, 1:]) * loss_mask[:, :-1], summed / mask sum
        ce = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none")
        mask = torch.tensor(v["loss_mask"][:-1], dtype=torch.float32)
        torch.testing.assert_close((ce * mask).sum() / mask.sum(), hf_loss)
        assert v["loss_mask"][-1] == 0


def test_jsonl_export_and_inconsistent_masks_are_refused(masks, tmp_path: Path) -> None:
    summary = export_masks(masks, tmp_path / "j", "jsonl")
    lines = (tmp_path / "j" / "data.jsonl").read_text().splitlines()
    assert len(lines) == summary["examples"] == 8
    table = pq.read_table(masks / "data.parquet")
    assert check_masks(table, "x")["trained_tokens"] == summary["trained_tokens"]
    bad = table.to_pylist()
    bad[2]["loss_mask"] = [1] * len(bad[2]["loss_mask"])
    import pyarrow as pa

    with pytest.raises(T3SError, match="example 'p2' has labels that disagree with loss_mask"):
        check_masks(pa.Table.from_pylist(bad, schema=table.schema), "x")
