"""The tokenize stage: validate a corpus, bind it to a run directory, write corpus and tokens."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from t3s.data import Example, corpus_fingerprint, load_corpus, write_corpus
from t3s.errors import T3SError
from t3s.fingerprint import digest, tokenizer_fingerprint
from t3s.io import write_parquet
from t3s.rundir import RunDir
from t3s.tokens import TokenizeConfig, TokenizedExample, read_tokens, tokenize_corpus, tokens_table


def prepare_corpus(
    run: RunDir, data: str | Path | None, tokenizer: Any, config: TokenizeConfig
) -> tuple[list[Example], list[TokenizedExample]]:
    """Load (or reuse) the run's corpus and tokens; refuse data or a tokenizer the run did not start with.

    With `data` None the run's own corpus.parquet is used (a run that was prepared before).
    """
    if data is None:
        if not run.corpus.exists():
            raise T3SError(f"run {run.root} has no corpus yet; pass --data")
        data = run.corpus
    examples = load_corpus(data)
    data_fp = corpus_fingerprint(examples)
    tok_fp = tokenizer_fingerprint(tokenizer)
    run.check_fingerprint("data", data_fp, f"corpus {data}")
    run.check_fingerprint("tokenizer", tok_fp, "the model's tokenizer")
    run.check_fingerprint("tokenize_config", config.fingerprint(), f"tokenization settings {asdict(config)}")
    fp = digest(data_fp, tok_fp, config.fingerprint())
    if run.stage_done("tokenize", fp) and run.tokens.exists() and run.corpus.exists():
        return examples, read_tokens(run.tokens)
    with run.running("tokenize", fp, config=asdict(config)) as extras:
        items, stats = tokenize_corpus(tokenizer, examples, config)
        if Path(data).resolve() != run.corpus.resolve():
            write_corpus(run.corpus, examples)
        write_parquet(run.tokens, tokens_table(items))
        extras["stats"] = asdict(stats)
    return examples, items
