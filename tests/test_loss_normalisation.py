"""A model whose forward takes no loss kwargs is still normalised by the global kept-token count."""

from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from conftest import arithmetic_rows, write_jsonl
from t3s.data import load_corpus
from t3s.masks import IGNORE, labels_for
from t3s.models import load_model
from t3s.tokens import TokenizeConfig, tokenize_corpus
from t3s.training import LoraSettings, TrainRecipe, build_trainer, prepare_model, sft_dataset


class PlainForwardLlama(LlamaForCausalLM):
    """An older-style forward without **kwargs (as in many remote-code models): Trainer cannot pass it
    `num_items_in_batch`. PeftModel passes the last three, always None here."""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, labels=labels
        )


@pytest.fixture(scope="module")
def items(tokenizer, tmp_path_factory):
    rows = arithmetic_rows(4)
    for i, r in enumerate(rows):
        r["response"] += " Done." * (6 * i)  # 14 to 32 kept tokens: per-micro-batch means differ
    path = write_jsonl(tmp_path_factory.mktemp("c") / "c.jsonl", rows)
    return tokenize_corpus(tokenizer, load_corpus(path), TokenizeConfig())[0]


def train(model, tokenizer, items, out: Path, **recipe) -> tuple[dict[str, torch.Tensor], list[dict]]:
    r = TrainRecipe(steps=1, lr=1e-1, seed=0, optim="sgd", max_grad_norm=1e9, **recipe)
    model = prepare_model(model, r)
    model.train()
    trainer = build_trainer(model, tokenizer, sft_dataset(items, [labels_for(t) for t in items]), r, out)
    trainer.train()
    weights = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    return weights, [row for row in trainer.state.log_history if "loss" in row]


def hand_loss(model_dir: Path, items) -> float:
    """Sum of next-token NLL over every kept token of the batch / the number of kept tokens."""
    model = load_model(str(model_dir), device=torch.device("cpu"))
    total, count = 0.0, 0
    with torch.no_grad():
        for t in items:
            ids = torch.tensor([t.input_ids])
            labels = torch.tensor(labels_for(t))[1:]
            logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
            kept = labels != IGNORE
            total -= logp[kept].gather(1, labels[kept, None]).sum().item()
            count += int(kept.sum())
    return total / count


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("micro", [1, 2])
def test_plain_forward_trains_like_the_kwargs_path(
    tiny_model, tokenizer, items, tmp_path: Path, micro
) -> None:
    reference, ref_log = train(
        load_model(str(tiny_model), device=torch.device("cpu")),
        tokenizer,
        items,
        tmp_path / "a",
        batch_size=4,
        micro_batch_size=micro,
    )
    plain, plain_log = train(
        PlainForwardLlama.from_pretrained(tiny_model), tokenizer, items, tmp_path / "b", batch_size=4,
        micro_batch_size=micro,
    )  # fmt: skip
    assert_same(reference, plain)
    expected = hand_loss(tiny_model, items)
    assert ref_log[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert plain_log[0]["loss"] == pytest.approx(expected, rel=1e-5)


def test_lora_on_a_plain_forward_trains_like_the_kwargs_path(
    tiny_model, tokenizer, items, tmp_path: Path
) -> None:
    # Trainer looks through PeftModel at the base model's forward: the same fallback must apply.
    lora = {"lora": LoraSettings(r=4, alpha=8), "batch_size": 4, "micro_batch_size": 1}
    reference, _ = train(
        load_model(str(tiny_model), device=torch.device("cpu")), tokenizer, items, tmp_path / "a", **lora
    )
    plain, log = train(
        PlainForwardLlama.from_pretrained(tiny_model), tokenizer, items, tmp_path / "b", **lora
    )
    assert_same(reference, plain)
    assert log[0]["loss"] == pytest.approx(hand_loss(tiny_model, items), rel=1e-5)
