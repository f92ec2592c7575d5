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
from t3s.stage import Attempt, Stage, execute
from t3s.tokens import TokenizeConfig, TokenizedExample, tokenize_corpus, tokens_table


class TokenizeStage(Stage):
    """The corpus (`data`, or the run's own when None) tokenized into RUN/tokens.parquet."""

    name = "tokenize"

    def __init__(self, data: str | Path | None, tokenizer: Any, config: TokenizeConfig) -> None:
        self.data, self.tokenizer, self.config = data, tokenizer, config
        self.source: str | Path = ""  # the corpus read: `data`, or the run's own
        self.examples: list[Example] = []
        self.fingerprints: dict[str, str] = {}

    def fingerprint(self, run: RunDir) -> str:
        if self.data is None and not run.corpus.exists():
            raise T3SError(f"run {run.root} has no corpus yet; pass --data")
        self.source = run.corpus if self.data is None else self.data
        self.examples = load_corpus(self.source)
        self.fingerprints = {
            "data": corpus_fingerprint(self.examples),
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "tokenize_config": self.config.fingerprint(),
        }
        return digest(*self.fingerprints.values())

    def outputs_exist(self, run: RunDir) -> bool:
        return run.tokens.exists() and run.corpus.exists()

    def prepare(self, run: RunDir, attempt: Attempt) -> dict[str, Any]:
        # A run keeps the corpus, tokenizer and settings it was started with.
        fps = self.fingerprints
        run.check_fingerprint("data", fps["data"], f"corpus {self.source}")
        run.check_fingerprint("tokenizer", fps["tokenizer"], "the model's tokenizer")
        run.check_fingerprint(
            "tokenize_config", fps["tokenize_config"], f"tokenization settings {self.config.model_dump()}"
        )
        if attempt.main:
            run.record_fingerprints(**fps)
        return {"config": self.config.model_dump()}

    def run(self, run: RunDir, attempt: Attempt) -> dict[str, Any]:
        items, stats = tokenize_corpus(self.tokenizer, self.examples, self.config)
        if attempt.main:
            if Path(self.source).resolve() != run.corpus.resolve():
                write_corpus(run.corpus, self.examples)
            write_parquet(run.tokens, tokens_table(items))
        return {"stats": asdict(stats)}


def prepare_corpus(
    run: RunDir, data: str | Path | None, tokenizer: Any, config: TokenizeConfig
) -> tuple[list[Example], list[TokenizedExample]]:
    """Load (or reuse) the run's corpus and tokens; refuse data or a tokenizer the run did not start with.

    With `data` None the run's own corpus.parquet is used (a run that was prepared before).
    """
    stage = TokenizeStage(data, tokenizer, config)
    execute(run, stage)
    return stage.examples, run.read_tokens()
