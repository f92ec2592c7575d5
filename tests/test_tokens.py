from pathlib import Path

import pytest

from conftest import arithmetic_rows, write_jsonl
from t3s.data import Example, load_corpus
from t3s.errors import T3SError
from t3s.tokens import TokenizeConfig, encode_prompt, tokenize_corpus, tokenize_example

EX = Example(id="e1", prompt="What is 2+3?", response="2 + 3 = 5. The answer is \\boxed{5}.", answer="5")


def test_chat_template_span_is_the_assistant_turn(tokenizer) -> None:
    item = tokenize_example(tokenizer, EX, TokenizeConfig())
    assert item is not None
    ids = item.input_ids
    prompt_text = tokenizer.decode(ids[: item.response_start])
    response_text = tokenizer.decode(ids[item.response_start : item.response_end])
    assert prompt_text.endswith("<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    assert response_text == EX.response + "<|im_end|>"
    assert item.response_end == len(ids)
    assert ids[: item.response_start] == encode_prompt(tokenizer, EX.prompt)


def test_message_prompts_keep_their_system_turn(tokenizer) -> None:
    ex = Example(
        "m", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "Hello", "x"
    )
    item = tokenize_example(tokenizer, ex, TokenizeConfig())
    assert item is not None
    text = tokenizer.decode(item.input_ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert tokenizer.decode(item.input_ids[item.response_start :]) == "Hello<|im_end|>"


def test_plain_template_appends_eos(tokenizer) -> None:
    ex = Example("p", "Q: 2+3=?\nA:", " 5", "5")
    item = tokenize_example(tokenizer, ex, TokenizeConfig(template="plain"))
    assert item is not None
    assert tokenizer.decode(item.input_ids[: item.response_start]) == "Q: 2+3=?\nA:"
    assert item.input_ids[item.response_start :][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(item.input_ids[item.response_start : -1]) == " 5"


def test_overlong_error_truncate_and_drop(tokenizer) -> None:
    full = tokenize_example(tokenizer, EX, TokenizeConfig())
    assert full is not None
    limit = full.response_start + 4
    with pytest.raises(T3SError, match=r"example 'e1': \d+ tokens exceed max length .*--overlong truncate"):
        tokenize_example(tokenizer, EX, TokenizeConfig(max_length=limit))
    cut = tokenize_example(tokenizer, EX, TokenizeConfig(max_length=limit, overlong="truncate"))
    assert cut is not None and cut.truncated
    assert cut.input_ids == full.input_ids[:limit] and cut.response_end == limit
    assert tokenize_example(tokenizer, EX, TokenizeConfig(max_length=limit, overlong="drop")) is None


def test_prompt_longer_than_max_length_is_always_an_error(tokenizer) -> None:
    with pytest.raises(T3SError, match=r"example .e1.: the prompt has .* tokens, not less than max length 8"):
        tokenize_example(tokenizer, EX, TokenizeConfig(max_length=8, overlong="drop"))


def test_corpus_stats_count_drops(tokenizer, tmp_path: Path) -> None:
    examples = load_corpus(write_jsonl(tmp_path / "c.jsonl", arithmetic_rows(6)))
    lengths = [len(tokenize_example(tokenizer, e, TokenizeConfig()).input_ids) for e in examples]  # type: ignore[union-attr]
    limit = sorted(lengths)[3]
    items, stats = tokenize_corpus(tokenizer, examples, TokenizeConfig(max_length=limit, overlong="drop"))
    assert stats.kept == len(items) == sum(n <= limit for n in lengths)
    assert stats.dropped == 6 - stats.kept


def test_chat_template_required_when_asked(tokenizer) -> None:
    from copy import deepcopy

    bare = deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(T3SError, match="no chat template"):
        tokenize_example(bare, EX, TokenizeConfig(template="chat"))
    item = tokenize_example(bare, EX, TokenizeConfig(template="auto"))  # falls back to plain
    assert item is not None and item.input_ids[-1] == bare.eos_token_id
