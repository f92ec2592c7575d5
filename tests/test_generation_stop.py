"""Generation stops at the chat template's end-of-turn token, not only at the tokenizer's EOS.

The model is a tiny Llama rigged into a bigram chain: its attention and MLP write nothing, so each
next token depends on the current one only. After the chat prompt's last token it writes
"Answer: 42", then <|im_end|>, then " junk" for ever. Its tokenizer's and generation config's EOS
is <|endoftext|>, as for a base model given ChatML.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from t3s.generation import Completion, SamplingParams, TransformersEngine
from t3s.tokens import encode_prompt

ANSWER = "Answer: 42"


def base_tokenizer(smollm2_dir: Path):
    """SmolLM2's tokenizer (ChatML template) with <|endoftext|> as EOS, as a base model has."""
    from t3s.models import load_tokenizer

    tok = load_tokenizer(str(smollm2_dir))
    tok.eos_token = "<|endoftext|>"
    return tok


def rigged_model(tok, prompt: list[int]):
    """prompt[-1] -> ANSWER -> <|im_end|> -> ' junk' -> ' junk' ... under greedy decoding."""
    from transformers import LlamaConfig, LlamaForCausalLM

    junk = tok(" junk", add_special_tokens=False)["input_ids"]
    chain = [
        prompt[-1],
        *tok(ANSWER, add_special_tokens=False)["input_ids"],
        tok.convert_tokens_to_ids("<|im_end|>"),
    ]
    chain += [*junk, *junk]
    assert len(set(chain[:-1])) == len(chain) - 1  # a bigram chain needs distinct tokens
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=2,  # head size 64, which vLLM's attention kernels take
        num_key_value_heads=1,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for k, (current, following) in enumerate(itertools.pairwise(chain)):
            model.model.embed_tokens.weight[current, k] = 1.0
            model.lm_head.weight[following, k] = 10.0
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    return model.eval()


@pytest.fixture(scope="module")
def rig(smollm2_dir: Path):
    tok = base_tokenizer(smollm2_dir)
    prompt = encode_prompt(tok, "What is 40+2?", "auto")
    return tok, prompt, rigged_model(tok, prompt)


def generate(
    backend: TransformersEngine, prompt: list[int], max_new_tokens: int = 20
) -> tuple[Completion, int]:
    """The one completion, and how many tokens `model.generate` really produced."""
    widths: list[int] = []
    real = backend.model.generate

    def spy(**kwargs):
        out = real(**kwargs)
        widths.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    backend.model.generate = spy
    try:
        [[completion]] = backend.generate([prompt], SamplingParams(max_new_tokens=max_new_tokens))
    finally:
        del backend.model.generate
    return completion, widths[0]


def test_generation_stops_at_the_template_end_of_turn_not_only_eos(rig) -> None:
    tok, prompt, model = rig
    completion, produced = generate(TransformersEngine(model, tok), prompt)
    # Without <|im_end|> among the stop ids this runs to 20 tokens: "Answer: 42 junk junk ...".
    assert (completion.text, completion.num_tokens, completion.finish_reason) == (ANSWER, 6, "stop")
    assert produced == 6 < 20  # model.generate itself stopped, the text was not cut afterwards
    assert completion.stop_token == "<|im_end|>"


def test_plain_prompts_stop_only_at_eos_and_a_mostly_truncated_call_warns(rig, capsys) -> None:
    tok, prompt, model = rig
    completion, produced = generate(TransformersEngine(model, tok, template="plain"), prompt)
    assert (completion.finish_reason, completion.stop_token, completion.num_tokens, produced) == (
        "length",
        None,
        20,
        20,
    )
    assert completion.text.startswith(ANSWER + " junk junk")
    assert (
        "warning: 1 of 1 samples hit the 20-token limit before a stop token (<|endoftext|>) and count as "
        "wrong; raise max_new_tokens, or check that the model ends its turns with one of these tokens\n"
    ) in capsys.readouterr().err


def test_stopped_samples_record_their_stop_token(rig) -> None:
    from t3s.backends import make_backend
    from t3s.sampling import sample_and_verify
    from t3s.verify import VerifierPool, load_verifier

    tok, prompt, model = rig
    pool = VerifierPool(load_verifier("math"))
    try:
        [record] = sample_and_verify(
            make_backend(model, tokenizer=tok),
            ["q"],
            [prompt],
            ["42"],
            SamplingParams(max_new_tokens=20),
            pool,
        ).records
    finally:
        pool.close()
    row = record.to_dict()
    assert (row["finish_reason"], row["stop_token"], row["num_tokens"], row["correct"]) == (
        "stop",
        "<|im_end|>",
        6,
        True,
    )


LLAMA3_LIKE = (
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def test_end_of_turn_tokens_come_from_the_template(smollm2_dir: Path) -> None:
    from t3s.generation import end_of_turn_ids, stop_tokens

    tok = base_tokenizer(smollm2_dir)
    assert stop_tokens(tok, "auto") == {0: "<|endoftext|>", 2: "<|im_end|>"}
    assert stop_tokens(tok, "plain") == {0: "<|endoftext|>"}
    tok.add_tokens(["<|eot_id|>"], special_tokens=True)
    tok.chat_template = LLAMA3_LIKE
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert end_of_turn_ids(tok) == [eot]
    assert stop_tokens(tok, "chat") == {0: "<|endoftext|>", eot: "<|eot_id|>"}
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n### end\n{% endfor %}"
    assert end_of_turn_ids(tok) == []  # a turn ended by plain text: no token to stop at


@pytest.mark.gpu
def test_vllm_backend_stops_at_the_template_end_of_turn(rig, tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    from t3s.backends import vllm_engine

    tok, prompt, model = rig
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    backend = vllm_engine(
        str(tmp_path / "model"),
        tok,
        "auto",
        gpu_memory_utilization=0.3,
        enforce_eager=True,
        max_model_len=512,
    )
    [[completion]] = backend.generate([prompt], SamplingParams(max_new_tokens=20))
    assert completion == Completion(ANSWER, 6, "stop", "<|im_end|>")
    [[cut]] = backend.generate([prompt], SamplingParams(max_new_tokens=4))
    assert (cut.finish_reason, cut.num_tokens, cut.stop_token) == ("length", 4, None)
