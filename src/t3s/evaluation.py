"""Benchmark evaluation: n samples per problem, verified, scored as avg@n, pass@k and maj@k.

A benchmark holds rows of `id`, `problem` (a string or chat messages; `prompt` is read when there
is no `problem`, so a corpus serves as well) and `answer`, as JSONL, Parquet or a saved HF dataset.

Every sample is appended durably to `<out>.samples.jsonl` as soon as its chunk of problems is
generated and verified, keyed by (model fingerprint, sampling-parameter hash, hash of the prompt
token ids, problem id, sample index). A killed evaluation resumes with only the missing samples;
another model, other sampling parameters or another prompt template fill their own key space in
the same file; raising the sample count adds samples to those already there. A sample whose gold
answer or verifier changed, or whose verifier failed (raised or timed out), is verified again, not
generated again. The summary `<out>.json` is written atomically once every sample is in; it counts
the verifier errors apart from wrong answers (they stay in the accuracy's denominator), and more
than `max_verifier_errors` of them stop the evaluation before the summary is written. maj@k votes
group answers by the verifier's equivalence (`maj_grouping`: math-verify, a custom verifier's
`equivalent`, or exact strings). Under `accelerate launch` or torchrun each process samples whole
chunks of problems, dealt in turn, into a samples file of its own that the main process merges into
the shared one (a killed job's too, at the next start); the main process writes the summary.

With a run directory, θ0 (step 0) and every probe checkpoint on disk (or trained policy models)
are scored into `RUN/eval/<bench>/`: `step-NNNNN.json` + `step-NNNNN.samples.jsonl` per checkpoint,
`policy-<name>.json` + `.samples.jsonl` per policy, and the held-out curve `curve.jsonl` (and
`policies.jsonl`) built from those summaries that match the current benchmark and settings.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from t3s import distributed
from t3s.backends import BackendOptions, BackendSpec, EngineBackend, Kind, chunk_seed, make_backend
from t3s.data import Problem, PromptItem, _scan, parse_prompt_item
from t3s.errors import T3SError
from t3s.fingerprint import digest, model_fingerprint
from t3s.generation import Engine, SampledSettings
from t3s.io import read_json, write_json, write_jsonl
from t3s.metrics import problem_scores, summarize
from t3s.rundir import RunDir
from t3s.sampling import SampleRecord, check_verifier_errors, sample_and_verify
from t3s.stage import Attempt, Stage, execute
from t3s.store import SampleStore, merge_partials, partial_path
from t3s.tokens import Template, encode_prompt
from t3s.verify import Grouping, VerifierPool, load_verifier

BackendFactory = Callable[[str], Engine]


# -- benchmarks ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bench:
    name: str
    path: str
    problems: list[PromptItem]

    @property
    def fingerprint(self) -> str:
        return digest([[p.id, p.prompt, p.answer] for p in self.problems])


def parse_bench_row(record: dict[str, Any], where: str) -> PromptItem | Problem:
    """`id`, `problem` (or `prompt`) and `answer`; a problem is reported under the field read."""
    key = "prompt" if "problem" not in record and "prompt" in record else "problem"
    parsed = parse_prompt_item({**record, "prompt": record.get(key)}, where)
    if isinstance(parsed, Problem) and parsed.field == "prompt":
        return replace(parsed, field=key)
    return parsed


def bench_name(path: str | Path) -> str:
    path = Path(path)
    name = path.name if path.is_dir() else path.stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "bench"


def load_bench(path: str | Path) -> Bench:
    """Read and check a benchmark, failing on the first bad row with a one-line error."""
    problems, bad = _scan(path, parse_bench_row)
    if bad:
        more = f" (and {len(bad) - 1} more problems)" if len(bad) > 1 else ""
        raise T3SError(f"{bad[0]}{more}")
    return Bench(bench_name(path), str(path), problems)


# -- settings ------------------------------------------------------------------------------------
class EvalSettings(SampledSettings):
    """How `t3s eval` samples, verifies and generates."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    samples: int = Field(16, ge=1, description="samples per problem (n of avg@n, pass@k, maj@k)")
    temperature: float = Field(0.6, ge=0, description="0 = greedy (then --samples 1)")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling: the probability mass kept")
    max_new_tokens: int = Field(32768, ge=1, description="new tokens per sample; longer ones count as wrong")
    seed: int = Field(0, description="the sampling seed")
    backend: Literal["transformers", "vllm"] = Field("transformers", description="transformers or vllm")
    verifier: str = Field("math", description="'math' (math-verify, last \\boxed{}) or module:function")
    verify_timeout: float = Field(
        10.0, gt=0, description="seconds per answer before it counts as a verifier error"
    )
    max_verifier_errors: float = Field(
        0.05,
        ge=0,
        le=1,
        description="fail when more of a model's verdicts are verifier errors (raised, timed out)",
    )
    template: Template = Field("auto", description="prompt format: auto (chat template if any), chat, plain")
    batch_size: int = Field(
        4, ge=1, description="transformers: prompts per generate call, each with --samples sequences"
    )
    chunk: int = Field(32, ge=1, description="problems generated between durable saves")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    dtype: str = Field("auto", description="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    trust_remote_code: bool = Field(
        False, description="allow custom model code from the checkpoint (off by default)"
    )

    def params_hash(self) -> str:
        """What decides the distribution of one sample (not how many are drawn, nor the backend)."""
        return digest("eval-sampling", self.temperature, self.top_p, self.max_new_tokens, self.seed)

    def sampling_dict(self) -> dict[str, Any]:
        return self.sampling().model_dump(exclude={"n"})

    def backend_kind(self) -> Kind:
        return "hf" if self.backend == "transformers" else "vllm"

    def backend_options(self) -> BackendOptions:
        """`chunk` problems per generate call, saved together, each call with a seed of its own."""
        return BackendOptions(
            template=self.template,
            batch_size=self.batch_size,
            chunk=self.chunk,
            seed=chunk_seed,
            device=self.device,
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
        )


def output_paths(out: str | Path) -> tuple[Path, Path]:
    """`X.json` -> (X.json, X.samples.jsonl); anything else is a directory holding both."""
    out = Path(out)
    if out.suffix == ".json":
        return out, out.with_suffix(".samples.jsonl")
    return out / "results.json", out / "samples.jsonl"


def _sample_store(
    samples_path: Path, model_fp: str, params_hash: str, *, append_to: Path | None = None
) -> SampleStore:
    """One model's samples under one set of sampling parameters, within a samples file (new ones
    appended to `append_to`, a process's own file, when several processes share the evaluation)."""
    return SampleStore(samples_path, {"model": model_fp, "params": params_hash}, append_to=append_to)


def result_samples(out: str | Path) -> list[dict[str, Any]]:
    """The samples behind the summary written to `out`: its model's, with its sampling parameters."""
    summary_path, samples_path = output_paths(out)
    summary = read_json(summary_path)
    return list(
        _sample_store(samples_path, summary["model_fingerprint"], summary["params_hash"]).rows.values()
    )


# -- one model on one benchmark ------------------------------------------------------------------
def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate(
    model_path: str,
    bench: Bench,
    settings: EvalSettings,
    out: str | Path,
    *,
    tokenizer: Any | None = None,
    tokenizer_path: str | None = None,
    backend_factory: BackendFactory | None = None,
    verifier: VerifierPool | None = None,
    label: str | None = None,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score `model_path` on `bench`, generating only the samples not yet in the samples file.

    `tokenizer` (with `tokenizer_path`, where it was loaded from) defaults to the model's own;
    `backend_factory(model_path)` (an engine) defaults to `make_backend`'s and is called only if
    samples are missing; `info` is merged into the summary (a run's step or policy). Returns the summary.
    """
    from accelerate.utils import gather_object

    from t3s.models import load_tokenizer

    summary_path, samples_path = output_paths(out)
    if tokenizer is None:
        tokenizer = load_tokenizer(model_path, trust_remote_code=settings.trust_remote_code)
        tokenizer_path = model_path
    problems = bench.problems
    prompts = [encode_prompt(tokenizer, p.prompt, settings.template) for p in problems]
    model_fp = model_fingerprint(model_path)
    params_hash = settings.params_hash()
    n = settings.samples
    state = distributed.state()
    if state.is_main_process:
        merge_partials(samples_path)  # left by a killed multi-process evaluation
    state.wait_for_everyone()
    multi = state.num_processes > 1
    own = partial_path(samples_path, state.process_index) if multi else None
    store = _sample_store(samples_path, model_fp, params_hash, append_to=own)
    mine = _shard(len(problems), settings.chunk, state.process_index, state.num_processes)
    options = settings.backend_options()
    backend = (
        EngineBackend(lambda: backend_factory(model_path), options)
        if backend_factory is not None
        else make_backend(
            BackendSpec(settings.backend_kind(), model_path),
            options,
            tokenizer=tokenizer,
            tokenizer_path=tokenizer_path,
        )
    )
    own_pool = verifier is None
    pool = verifier or VerifierPool(load_verifier(settings.verifier), timeout=settings.verify_timeout)
    try:
        sampled = sample_and_verify(
            backend,
            [problems[i].id for i in mine],
            [prompts[i] for i in mine],
            [problems[i].answer for i in mine],
            settings.sampling(),
            pool,
            store=store,
            verifier_spec=settings.verifier,
            progress=f"eval {label or Path(model_path).name}",
        )
        del backend  # free the model before the next checkpoint is loaded
        if sampled.generated:
            gc.collect()
            _empty_cuda_cache()
        local = [sampled.records[j * n : (j + 1) * n] for j in range(len(mine))]
        # Truncated samples never reached a final answer: they do not vote.
        local_groupings = pool.group_answers(
            [[r.extracted if r.finish_reason == "stop" else None for r in rs] for rs in local]
        )
    finally:
        if own_pool:
            pool.close()
    share = (mine, local, local_groupings, sampled.generated)
    rows, groupings, generated = _gathered(len(problems), gather_object([share]) if multi else [share])
    if multi and state.is_main_process:
        merge_partials(samples_path)  # every process has appended its last sample: gather waits for all

    where, setting = f"eval {label or model_path} on {bench.name}", "--max-verifier-errors"
    records = [r for rs in rows for r in rs]
    errors = check_verifier_errors(records, settings.max_verifier_errors, where, setting)
    grouping_errors = check_verifier_errors(
        groupings, settings.max_verifier_errors, where, setting, "maj@k answer groupings"
    )
    summary = _summarize(problems, rows, groupings)
    summary["metrics"].update(verifier_errors=errors, maj_grouping_errors=grouping_errors)
    summary = {
        "model": model_path,
        "model_fingerprint": model_fp,
        "bench": bench.path,
        "bench_name": bench.name,
        "bench_fingerprint": bench.fingerprint,
        **(info or {}),
        "problems": len(problems),
        "samples": n,
        "sampling": settings.sampling_dict(),
        "params_hash": params_hash,
        "template": settings.template,
        "verifier": settings.verifier,
        "maj_grouping": pool.grouping,
        "backend": settings.backend,
        "samples_file": samples_path.name,
        "generated": generated,
        **summary,
    }
    if state.is_main_process:
        write_json(summary_path, summary)
    state.wait_for_everyone()  # the other processes may read it next (a run's curve)
    return summary


def _shard(n: int, chunk: int, process: int, processes: int) -> list[int]:
    """The problems one process samples: whole chunks, dealt in turn. A fresh evaluation's generate
    calls (and so their seeds) are then those of one process: samples do not depend on the count."""
    return [i for i in range(n) if (i // chunk) % processes == process]


def _gathered(
    n: int, shares: Sequence[tuple[list[int], list[list[SampleRecord]], list[Grouping], int]]
) -> tuple[list[list[SampleRecord]], list[Grouping], int]:
    """Every process's (problems, their samples, their answer groups, samples generated) in problem order."""
    rows: list[Any] = [None] * n
    groupings: list[Any] = [None] * n
    for mine, local, local_groupings, _ in shares:
        for i, samples, grouping in zip(mine, local, local_groupings, strict=True):
            rows[i], groupings[i] = samples, grouping
    return rows, groupings, sum(share[3] for share in shares)


def _summarize(
    problems: Sequence[PromptItem], rows: Sequence[Sequence[SampleRecord]], groupings: Sequence[Grouping]
) -> dict[str, Any]:
    """Metrics over problems, total generated tokens, and each problem's own scores."""
    scores, per_problem = [], []
    tokens = truncated = 0
    for p, samples, grouping in zip(problems, rows, groupings, strict=True):
        correct = [bool(r.correct) for r in samples]
        tokens += sum(r.num_tokens or 0 for r in samples)
        truncated += sum(r.finish_reason == "length" for r in samples)
        scores.append(problem_scores(correct, grouping.groups))
        errors = sum(r.error is not None for r in samples)
        per_problem.append({"id": p.id, "correct": sum(correct), "verifier_errors": errors, **scores[-1]})
    metrics: dict[str, Any] = summarize(scores)
    n = len(problems) * len(rows[0])
    metrics.update(tokens=tokens, mean_tokens=tokens / n, truncated=truncated / n)
    return {"metrics": metrics, "per_problem": per_problem}


# -- a run's trajectory and trained policies ------------------------------------------------------
@dataclass(frozen=True)
class Target:
    label: str  # the artifact name: step-00010, policy-sft
    path: str
    info: dict[str, Any]


def run_template(run: RunDir) -> Template:
    """The prompt template the run was tokenized with, so evaluation conditions like training."""
    return run.stage("tokenize").get("config", {}).get("template", "auto")


def probe_targets(run: RunDir, steps: Sequence[int] | None = None) -> list[Target]:
    """θ0 as step 0 and every complete probe checkpoint on disk (or just `steps`)."""
    found = run.checkpoints()
    for k in steps or ():
        if k not in found:
            raise T3SError(
                f"step {k}: no such checkpoint in {run.checkpoints_dir} (on disk: {sorted(found)}); "
                "probe with --mode all or --keep-step to keep it"
            )
    chosen = sorted(set(steps)) if steps else sorted(found)
    return [Target(f"step-{k:05d}", found[k], {"step": k}) for k in chosen]


def policy_targets(run: RunDir, policies: Sequence[str]) -> list[Target]:
    """The run's models by name (`RunDir.model`: trained policies, base, sft); `all` means every
    trained model on disk."""
    if list(policies) == ["all"]:
        policies = [p.name for p in run.train_dirs() if (run.model_dir(p.name) / "config.json").exists()]
        if not policies:
            raise T3SError(
                f"run {run.root} has no trained policy model under {run.train_root}; run `t3s train` first"
            )
    return [Target(f"policy-{name}", run.model(name), {"policy": name}) for name in policies]


def _matching_rows(
    out_dir: Path, prefix: str, key: str, bench: Bench, settings: EvalSettings, grouping: str
) -> list[dict[str, Any]]:
    """Summary rows of the artifacts in `out_dir` scored on this benchmark with these settings."""
    want = {
        "bench_fingerprint": bench.fingerprint,
        "params_hash": settings.params_hash(),
        "samples": settings.samples,
        "template": settings.template,
        "verifier": settings.verifier,
        "maj_grouping": grouping,  # summaries from before maj@k grouped answers voted by exact string
    }
    rows = []
    for path in sorted(out_dir.glob(f"{prefix}-*.json")):
        s = read_json(path)
        if all(s.get(k) == v for k, v in want.items()):
            rows.append(
                {
                    key: s[key],
                    "model": s["model"],
                    "problems": s["problems"],
                    "samples": s["samples"],
                    "maj_grouping": s["maj_grouping"],
                    **s["metrics"],
                }
            )
    return sorted(rows, key=lambda r: r[key])


class EvalStage(Stage):
    """The probe trajectory (or trained policies) of a run scored into RUN/eval/<bench>/.

    Never skipped: each model's samples file is the cache, from which `evaluate` resumes, and a
    failed verdict there is verified again on every run.
    """

    skippable = False

    def __init__(
        self,
        bench: Bench,
        settings: EvalSettings,
        *,
        steps: Sequence[int] | None = None,
        policies: Sequence[str] | None = None,
        backend_factory: BackendFactory | None = None,
    ) -> None:
        self.bench, self.settings, self.steps, self.policies = bench, settings, steps, policies
        self.backend_factory = backend_factory
        self.name = f"eval:{bench.name}" + (":policies" if policies else "")
        self.targets: list[Target] = []
        self.base = ""  # θ0, whose tokenizer every target's prompts are encoded with
        self.rows: list[dict[str, Any]] = []  # the curve (or policy) rows, once run

    def fingerprint(self, run: RunDir) -> str:
        if self.policies:
            self.targets = policy_targets(run, self.policies)
        else:
            self.targets = probe_targets(run, self.steps)
        self.base = run.base_model()
        settings = self.settings
        return digest(
            self.bench.fingerprint,
            settings.params_hash(),
            settings.samples,
            settings.template,
            settings.verifier,
            [(t.label, model_fingerprint(t.path)) for t in self.targets],
        )

    def prepare(self, run: RunDir, attempt: Attempt) -> dict[str, Any]:
        return {"bench": self.bench.path, "targets": [t.label for t in self.targets]}

    def run(self, run: RunDir, attempt: Attempt) -> dict[str, Any]:
        from t3s.models import load_tokenizer

        bench, settings = self.bench, self.settings
        prefix = "policy" if self.policies else "step"
        table = run.eval_table(bench.name, policies=bool(self.policies))
        base = self.base
        # One tokenizer for every checkpoint: the prompts stay identical along the trajectory.
        tokenizer = load_tokenizer(base, trust_remote_code=settings.trust_remote_code)
        out_dir = run.eval_dir(bench.name)
        pool = VerifierPool(load_verifier(settings.verifier), timeout=settings.verify_timeout)
        try:
            for t in self.targets:
                evaluate(
                    t.path,
                    bench,
                    settings,
                    run.eval_result(bench.name, t.label),
                    tokenizer=tokenizer,
                    tokenizer_path=base,
                    backend_factory=self.backend_factory,
                    verifier=pool,
                    label=t.label,
                    info=t.info,
                )
                self.rows = _matching_rows(out_dir, prefix, prefix, bench, settings, pool.grouping)
                if attempt.main:
                    write_jsonl(table, self.rows)
        finally:
            pool.close()
        return {"table": str(table.relative_to(run.root))}


def evaluate_run(
    run_path: str | Path,
    bench: Bench,
    settings: EvalSettings,
    *,
    steps: Sequence[int] | None = None,
    policies: Sequence[str] | None = None,
    backend_factory: BackendFactory | None = None,
) -> list[dict[str, Any]]:
    """Score the probe trajectory (or the given policies) of a run; returns the curve (or policy) rows.

    Writes `RUN/eval/<bench>/<label>.json` and `.samples.jsonl` per model, then `curve.jsonl`
    (rows by step) or `policies.jsonl` (rows by policy), rebuilt after each model.
    """
    stage = EvalStage(bench, settings, steps=steps, policies=policies, backend_factory=backend_factory)
    execute(RunDir(run_path), stage)
    return stage.rows
