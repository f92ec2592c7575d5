"""The trajectory probe: plain SFT from θ0, training accuracy at checkpoints, the Imitation Bottleneck.

At θ0 and every `eval.every` steps the probe saves a checkpoint, generates answers for the
training prompts and verifies them, appending a row to `probe/metrics.jsonl`. θb is the
checkpoint with the lowest training accuracy (ties: the earliest), θ0 excluded. In `online` mode
only the latest checkpoint (to resume from), the running minimum and the steps asked to be kept
stay on disk; in `all` mode every checkpoint stays (weights only, except the latest). Killing the
probe and running the same command again resumes from the latest complete checkpoint; a checkpoint
killed while it was being measured resumes its sampling from the samples already verified, which
each process keeps in `probe/.samples-step-NNNNN.process-<k>.jsonl` (keyed by the probe's
fingerprint and the step, like `t3s eval`'s samples) until the step's row is written.

With `search: adaptive` the probe measures only the checkpoints `t3s.probe_search` asks for (a
coarse grid, then the minimum's neighbours); the others stay on disk (weights only) while the search
may still ask for them. It reuses a greedy answer of the nearest measured checkpoint when one
teacher-forced pass shows the new checkpoint would generate it too, and records at every grid
checkpoint, without generating, the loss of θ0's own answers (`probe/signal.jsonl`). Rows count the
tokens generated and reused.

`t3s.callback.T3SCallback` runs the same probe (this stage's books, `Probe`, `AccuracyProbe`) inside
a user's own Trainer.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from t3s.backends import BackendOptions, BackendSpec, make_backend
from t3s.data import Example
from t3s.errors import T3SError
from t3s.fingerprint import digest, model_fingerprint
from t3s.generation import SampledSettings
from t3s.io import append_jsonl, read_jsonl, write_jsonl
from t3s.masks import labels_for
from t3s.probe_search import AdaptiveSearch, Point, done, needed, next_step
from t3s.rundir import RunDir
from t3s.sampling import SampleRecord, accuracy, check_verifier_errors, sample_and_verify, verify_key
from t3s.stage import Attempt, Stage
from t3s.store import SampleStore
from t3s.tokens import TokenizeConfig, TokenizedExample, encode_prompt
from t3s.training import (
    TrainRecipe,
    build_trainer,
    checkpoint_step,
    list_checkpoints,
    prepare_model,
    remove_incomplete_checkpoints,
    sft_dataset,
    strip_training_state,
)
from t3s.verify import VerifierPool, load_verifier


class ProbeEval(SampledSettings):
    """How training accuracy is measured at each evaluated checkpoint."""

    model_config = ConfigDict(extra="forbid")
    every: int = Field(1, ge=1, description="measure training accuracy every N steps")
    prompts: int | None = Field(None, ge=1, description="seeded subset of training prompts (default: all)")
    samples: int = Field(1, ge=1, description="samples per prompt")
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: the probability mass kept")
    max_new_tokens: int = Field(1024, ge=1, description="new tokens per sample")
    batch_size: int = Field(32, ge=1, description="prompts per generation batch")
    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="generation backend: transformers or vllm"
    )
    verifier: str = Field("math", description="'math' or module:function")
    seed: int = Field(0, description="the sampling seed")
    loss: bool = Field(True, description="also the teacher-forced loss on the training subset")
    heldout: str | None = Field(
        None, description="a benchmark (id, problem, answer) also scored per checkpoint"
    )
    heldout_prompts: int | None = Field(None, ge=1, description="seeded subset of the held-out benchmark")
    max_verifier_errors: float = Field(
        0.05,
        ge=0,
        le=1,
        description="stop when more of a checkpoint's verdicts are verifier errors (fraction)",
    )


class ProbeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["online", "all"] = Field(
        "online", description="online (θ0, latest, running min) or all checkpoints"
    )
    fixed_step: int | None = Field(None, ge=1, description="T3S-simple: θb = this step, no accuracy search")
    keep_steps: list[int] = Field(default_factory=list, description="also keep this checkpoint (repeatable)")
    eval: ProbeEval = Field(default_factory=ProbeEval, description="how training accuracy is measured")
    search: Literal["exhaustive", "adaptive"] = Field(
        "exhaustive",
        description="exhaustive: measure every checkpoint; adaptive: a coarse grid, then refine around the minimum",
    )
    adaptive: AdaptiveSearch = Field(default_factory=AdaptiveSearch, description="the adaptive search")

    @model_validator(mode="after")
    def _searchable(self) -> ProbeSettings:
        if self.search == "adaptive" and self.fixed_step is not None:
            raise ValueError("search 'adaptive' has no accuracy to search with fixed_step (T3S-simple)")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left at their defaults, the search settings are not written: manifests and hashes of
        # exhaustive probes stay as they were before the search was a setting.
        data: dict[str, Any] = handler(self)
        if self.search == "exhaustive" and self.adaptive == AdaptiveSearch():
            data.pop("search", None)
            data.pop("adaptive", None)
        return data


def eval_grid(recipe: TrainRecipe, settings: ProbeSettings) -> list[int]:
    """The checkpoints the exhaustive probe measures: θ0, every `eval.every` steps, the final step."""
    return sorted({0, *range(settings.eval.every, recipe.steps + 1, settings.eval.every), recipe.steps})


def choose_bottleneck(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The evaluated step > 0 with the lowest training accuracy; ties go to the earliest step."""
    candidates = [r for r in rows if r["step"] > 0 and r.get("train_accuracy") is not None]
    if not candidates:
        raise T3SError("no evaluated checkpoint after step 0: cannot choose the Imitation Bottleneck")
    return min(candidates, key=lambda r: (r["train_accuracy"], r["step"]))


def save_steps(recipe: TrainRecipe, settings: ProbeSettings) -> set[int]:
    steps = {recipe.steps, *settings.keep_steps}
    if settings.fixed_step is not None:
        if settings.fixed_step > recipe.steps:
            raise T3SError(f"fixed_step {settings.fixed_step} is beyond the probe's {recipe.steps} steps")
        steps.add(settings.fixed_step)
    else:
        steps.update(eval_grid(recipe, settings)[1:])
    return steps


class AccuracyProbe:
    """Measures training accuracy, teacher-forced loss and (optionally) held-out accuracy of a model."""

    def __init__(
        self,
        run: RunDir,
        examples: Sequence[Example],
        items: Sequence[TokenizedExample],
        tokenizer: Any,
        template: Any,
        settings: ProbeEval,
        *,
        fingerprint: str,
    ) -> None:
        self.run, self.tokenizer, self.settings = run, tokenizer, settings
        self.template, self.fingerprint = template, fingerprint
        rng = random.Random(settings.seed)
        index = list(range(len(items)))
        if settings.prompts is not None and settings.prompts < len(index):
            index = sorted(rng.sample(index, settings.prompts))
        by_id = {e.id: e for e in examples}
        self.items = [items[i] for i in index]
        train = [by_id[t.id] for t in self.items]
        # One list of prompts to generate for: the training subset, then the held-out subset.
        self.ids = [e.id for e in train]
        self.golds = [e.answer for e in train]
        self.prompts = [encode_prompt(tokenizer, e.prompt, template) for e in train]
        self.keys = [digest(ids) for ids in self.prompts]  # of each prompt's stored samples
        self.heldout = 0
        if settings.heldout is not None:
            from t3s.evaluation import load_bench

            problems = load_bench(settings.heldout).problems
            if settings.heldout_prompts is not None and settings.heldout_prompts < len(problems):
                problems = [
                    problems[i] for i in sorted(rng.sample(range(len(problems)), settings.heldout_prompts))
                ]
            self.heldout = len(problems)
            self.ids += [p.id for p in problems]
            self.golds += [p.answer for p in problems]
            heldout = [encode_prompt(tokenizer, p.prompt, template) for p in problems]
            self.prompts += heldout
            # A held-out problem is sampled apart from a training prompt with the same id and text.
            self.keys += [digest("heldout", ids) for ids in heldout]
        self.verifier = VerifierPool(load_verifier(settings.verifier))

    def _answer_item(self, i: int, record: dict[str, Any], exact: bool = True) -> TokenizedExample | None:
        """Prompt `i` followed by a stored answer's tokens (and its stop token). `exact`: as they would be
        generated, else None (a failed verdict; a cut answer whose text re-encodes to another length)."""
        if exact and record.get("error") is not None:
            return None
        ids = self.tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
        if record["finish_reason"] == "stop" and record.get("stop_token") is not None:
            ids = [*ids, self.tokenizer.convert_tokens_to_ids(record["stop_token"])]
        elif exact and (record["finish_reason"] != "length" or len(ids) != self.settings.max_new_tokens):
            return None
        prompt = list(self.prompts[i])
        return TokenizedExample(self.ids[i], [*prompt, *ids], len(prompt), len(prompt) + len(ids))

    def _neighbour_answers(self, step: int) -> dict[tuple[bool, str], dict[str, Any]]:
        """A measured checkpoint's answers by (held out, problem id)."""
        answers = {(False, r["id"]): r for r in read_jsonl(self.run.probe_samples(step))}
        if self.heldout:
            answers |= {(True, r["id"]): r for r in read_jsonl(self.run.probe_samples(step, heldout=True))}
        return answers

    def _reuse(self, model: Any, store: SampleStore, index: Sequence[int], share_from: int) -> None:
        """Store, as this checkpoint's, each greedy answer of checkpoint `share_from` that this model
        reproduces token for token: generating it again would give the very same answer."""
        from t3s.confidence import greedy_reproduces

        answers = self._neighbour_answers(share_from)
        candidates = []
        for i in index:
            record = answers.get((i >= len(self.items), self.ids[i]))
            if record is None or (self.ids[i], self.keys[i], 0) in store.rows:
                continue
            item = self._answer_item(i, record)
            if item is not None:
                candidates.append((i, record, item))
        if not candidates:
            return
        was_training = model.training
        model.eval()
        hits = greedy_reproduces(model, [item for _, _, item in candidates])
        model.train(was_training)
        for (i, record, item), hit in zip(candidates, hits, strict=True):
            if not hit:
                continue
            rec = SampleRecord(**{k: record.get(k) for k in SampleRecord.__dataclass_fields__})
            row = {**rec.to_dict(), "num_tokens": item.response_end - item.response_start}
            store.add(
                {
                    **row,
                    **store.space,
                    "answer": self.golds[i],
                    "prompt": self.keys[i],
                    "verify": verify_key(self.settings.verifier, self.golds[i]),
                    "reused": True,
                }
            )

    def _local_measure(
        self, model: Any, step: int, checkpoint: Path, index: Sequence[int], share_from: int | None
    ) -> list[Any]:
        from t3s import distributed

        settings = self.settings
        source = BackendSpec("vllm", str(checkpoint)) if settings.backend == "vllm" else model
        options = BackendOptions(
            template=self.template,
            batch_size=settings.batch_size,
            progress="probe accuracy",
            engine={"gpu_memory_utilization": 0.3},  # vLLM: a small engine beside the training model
        )
        backend = make_backend(source, options, tokenizer=self.tokenizer)
        # Each process stores its own share: one file per process, so that appends never interleave.
        store = SampleStore(
            self.run.probe_partial_samples(step, distributed.state().process_index),
            {"probe": self.fingerprint, "step": step},
        )
        if share_from is not None:
            self._reuse(model, store, index, share_from)
        reused = {k for k, row in store.rows.items() if row.get("reused")}
        records = sample_and_verify(
            backend,
            [self.ids[i] for i in index],
            [self.prompts[i] for i in index],
            [self.golds[i] for i in index],
            settings.sampling(),
            self.verifier,
            store=store,
            verifier_spec=settings.verifier,
            keys=[self.keys[i] for i in index],
        ).records
        del backend
        n = self.settings.samples
        tagged = [(index[j // n], r) for j, r in enumerate(records)]
        generated = sum(
            r.num_tokens or 0 for i, r in tagged if (self.ids[i], self.keys[i], r.sample) not in reused
        )
        counts = [generated, sum(r.num_tokens or 0 for _, r in tagged) - generated]
        train = [self.items[i] for i in index if i < len(self.items)]
        nll, tokens = 0.0, 0
        if train and self.settings.loss:
            was_training = model.training
            model.eval()
            from t3s.confidence import score

            nll = -sum(float(np.nansum(v)) for _, v in score(model, train))
            model.train(was_training)
            tokens = sum(t.response_end - max(t.response_start, 1) for t in train)
        return [tagged, nll, tokens, *counts]

    def measure(
        self, model: Any, step: int, checkpoint: Path, share_from: int | None = None
    ) -> dict[str, Any] | None:
        """Measure `model`, saved at `checkpoint` (θ0: the model's own directory), on every process
        (each a share of the prompts); the main process gets the row. With `share_from` (greedy
        decoding), the answers of that measured checkpoint are reused where the model reproduces them."""
        from accelerate.utils import gather_object

        from t3s import distributed

        state = distributed.state()
        with state.split_between_processes(list(range(len(self.prompts)))) as mine:
            local = self._local_measure(model, step, checkpoint, mine, share_from)
        parts = gather_object([local]) if state.num_processes > 1 else [local]
        tagged = [t for p in parts for t in p[0]]
        train = [r for i, r in tagged if i < len(self.items)]
        heldout = [r for i, r in tagged if i >= len(self.items)]
        # Every process holds every record: all stop together, before a row or samples file is written.
        limit, setting = self.settings.max_verifier_errors, "probe.eval.max_verifier_errors"
        errors = check_verifier_errors(train, limit, f"probe step {step}", setting)
        heldout_errors = check_verifier_errors(heldout, limit, f"probe step {step} held-out", setting)
        if not state.is_main_process:
            return None
        tokens = sum(p[2] for p in parts)
        write_jsonl(self.run.probe_samples(step), [r.to_dict() for r in train])
        row: dict[str, Any] = {
            "step": step,
            "train_accuracy": accuracy(train),
            "verifier_errors": errors,
            "teacher_forced_loss": sum(p[1] for p in parts) / tokens if tokens else None,
            "prompts": len(self.items),
            "samples": len(train),
            "truncated": sum(r.finish_reason == "length" for r in train),
            "mean_tokens": float(np.mean([r.num_tokens for r in train])),
            "generated_tokens": sum(p[3] for p in parts),  # held-out answers included
            "reused_tokens": sum(p[4] for p in parts),
        }
        if heldout:
            write_jsonl(self.run.probe_samples(step, heldout=True), [r.to_dict() for r in heldout])
            row["heldout_accuracy"] = accuracy(heldout)
            row["heldout_verifier_errors"] = heldout_errors
            row["heldout_prompts"] = self.heldout
            row["heldout_truncated"] = sum(r.finish_reason == "length" for r in heldout)
        for partial in self.run.probe_dir.glob(self.run.probe_partial_samples(step, "*").name):
            partial.unlink()
        return row

    def own_answer_loss(self, model: Any) -> float | None:
        """Mean per-token NLL under `model` of θ0's own answers (`probe/samples/step-00000.jsonl`) to the
        training subset: no generation."""
        from accelerate.utils import gather_object

        from t3s import distributed
        from t3s.confidence import score

        answers = {r["id"]: r for r in read_jsonl(self.run.probe_samples(0))}
        items = [
            item
            for i in range(len(self.items))
            if self.ids[i] in answers
            and (item := self._answer_item(i, answers[self.ids[i]], exact=False)) is not None
        ]
        state = distributed.state()
        with state.split_between_processes(items) as mine:
            was_training = model.training
            model.eval()
            values = [v for _, v in score(model, mine)] if mine else []
            model.train(was_training)
            local = (
                -sum(float(np.nansum(v)) for v in values),
                sum(int(np.isfinite(v).sum()) for v in values),
            )
        parts = gather_object([local]) if state.num_processes > 1 else [local]
        tokens = sum(t for _, t in parts)
        return sum(nll for nll, _ in parts) / tokens if tokens else None


def _train_loss(log_history: Sequence[dict[str, Any]], step: int) -> float | None:
    for row in reversed(log_history):
        if row.get("step") == step and "loss" in row:
            return float(row["loss"])
    return None


class Probe:
    """State shared by the callback and the driver: metrics, pruning, the running minimum, the search."""

    def __init__(
        self,
        run: RunDir,
        settings: ProbeSettings,
        recipe: TrainRecipe,
        accuracy_probe: AccuracyProbe | None,
        load: Callable[[Path], Any] | None = None,
    ) -> None:
        self.run, self.settings, self.recipe = run, settings, recipe
        self.accuracy = accuracy_probe
        self.load = load  # a checkpoint from disk, for the adaptive search's refinement
        self.save_steps = save_steps(recipe, settings)
        self.grid = eval_grid(recipe, settings)
        self.adaptive = settings.search == "adaptive" and accuracy_probe is not None
        # Wall time counts from the probe's first start, so a resumed probe's times stay comparable.
        self.started = float(run.stage("probe").get("first_started", time.time()))

    @property
    def signal_path(self) -> Path:
        return self.run.probe_dir / "signal.jsonl"

    def rows(self) -> list[dict[str, Any]]:
        return self.run.probe_metrics()

    def evaluated(self) -> set[int]:
        return {r["step"] for r in self.rows()}

    def measured(self) -> dict[int, Point]:
        """The search's view of the rows: correct samples out of all, per measured step."""
        return {
            r["step"]: Point(round(r["train_accuracy"] * r["samples"]), r["samples"]) for r in self.rows()
        }

    def signal(self) -> dict[int, float | None]:
        return {r["step"]: r["own_answer_loss"] for r in read_jsonl(self.signal_path)}

    def needs_eval(self, step: int) -> bool:
        if self.accuracy is None or self.adaptive:
            return False
        return (
            step == 0
            or (self.settings.fixed_step is None and step % self.settings.eval.every == 0)
            or (step == self.recipe.steps)
        )

    def record(
        self, model: Any, step: int, loss: float | None, checkpoint: Path, share_from: int | None = None
    ) -> dict[str, Any] | None:
        """Measure `step` if due and not measured yet; the main process gets the row it appended."""
        if not (self.adaptive or self.needs_eval(step)) or step in self.evaluated():
            return None
        assert self.accuracy is not None
        row = self.accuracy.measure(model, step, checkpoint, share_from)
        self.note_signal(model, step)  # θ0's answers, which it needs, are in once θ0 is measured
        if row is not None:  # only the main process gets the row
            row = {"step": step, "train_loss": loss, **{k: v for k, v in row.items() if k != "step"}}
            if self.adaptive:
                row["own_answer_loss"] = self.signal().get(step)
            row["wall_time"] = round(time.time() - self.started, 2)
            append_jsonl(self.run.metrics, row)
        return row

    def note_signal(self, model: Any, step: int) -> None:
        """The own-answer loss of a grid checkpoint, once (θ0's answers must be measured first)."""
        from t3s import distributed

        if not self.adaptive or step not in self.grid:
            return
        distributed.state().wait_for_everyone()  # the main process writes θ0's answers
        if step in self.signal():
            return
        assert self.accuracy is not None
        value = self.accuracy.own_answer_loss(model)
        if distributed.state().is_main_process:
            append_jsonl(self.signal_path, {"step": step, "own_answer_loss": value})
        distributed.state().wait_for_everyone()

    def advance(self, model: Any, available: int, loss_of: Callable[[int], float | None]) -> None:
        """Measure what the adaptive search asks for among the checkpoints trained so far; `model` is
        the one at step `available`, the others are loaded from disk."""
        from t3s import distributed

        while (step := next_step(self.grid, self.measured(), self.settings.adaptive, available)) is not None:
            ckpt = self.run.checkpoints_dir / f"checkpoint-{step}"
            share = self._share_from(step)
            if step == available:
                self.record(model, step, loss_of(step), ckpt, share)
            else:
                if self.load is None or not ckpt.exists():
                    raise T3SError(f"adaptive probe search: checkpoint {ckpt} is needed but not on disk")
                saved = self.load(ckpt)
                self.record(saved, step, loss_of(step), ckpt, share)
                del saved
            distributed.state().wait_for_everyone()  # every process reads the row just written

    def _share_from(self, step: int) -> int | None:
        """The nearest measured checkpoint (the earlier on a tie), whose greedy answers may be reused."""
        if self.settings.eval.temperature > 0:
            return None
        measured = self.evaluated()
        return min(measured, key=lambda s: (abs(s - step), s)) if measured else None

    def check_done(self) -> None:
        if self.adaptive and not done(self.grid, self.measured(), self.settings.adaptive):
            raise T3SError(f"adaptive probe search in {self.run.root} ended unfinished: rerun the probe")

    def keep(self) -> set[int]:
        keep = {*self.settings.keep_steps}
        if self.settings.fixed_step is not None:
            keep.add(self.settings.fixed_step)
        rows = [r for r in self.rows() if r["step"] > 0]
        if rows:
            keep.add(choose_bottleneck(rows)["step"])
        if self.adaptive:
            keep |= needed(self.grid, self.measured(), self.settings.adaptive)
        return keep

    def prune(self) -> None:
        """Strip training state from all but the latest checkpoint; online mode deletes the unneeded."""
        from t3s import distributed

        if not distributed.state().is_main_process:
            return
        checkpoints = list_checkpoints(self.run.checkpoints_dir)
        if not checkpoints:
            return
        keep = self.keep()
        for ckpt in checkpoints[:-1]:  # the latest keeps its optimizer state to resume from
            if self.settings.mode == "online" and checkpoint_step(ckpt) not in keep:
                shutil.rmtree(ckpt, ignore_errors=True)
            else:
                strip_training_state(ckpt)


def _make_callback(probe: Probe) -> Any:
    from transformers import TrainerCallback

    class ProbeCallback(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            control.should_save = state.global_step in probe.save_steps
            return control

        def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
            step = state.global_step
            ckpt = Path(args.output_dir) / f"checkpoint-{step}"
            if probe.adaptive:  # the search decides what to measure
                probe.note_signal(model, step)
                probe.advance(model, step, lambda k: _train_loss(state.log_history, k))
            else:
                probe.record(model, step, _train_loss(state.log_history, step), ckpt)
            probe.prune()
            return control

    return ProbeCallback()


def probe_fingerprint(tokens_fp: str, model: str, recipe: TrainRecipe, settings: ProbeSettings) -> str:
    # The mode and kept steps decide only what stays on disk, not the trajectory; the error limit
    # only whether a measurement stands. The exhaustive search hashes as before the search was a setting.
    exclude: dict[str, Any] = {"mode": True, "keep_steps": True, "eval": {"max_verifier_errors"}}
    if settings.search == "exhaustive":
        exclude |= {"search": True, "adaptive": True}
    measured = settings.model_dump(exclude=exclude)
    return digest(tokens_fp, model_fingerprint(model), recipe.model_dump(exclude={"report_to"}), measured)


def _check_eval_backend(model_path: str, recipe: TrainRecipe, settings: ProbeSettings) -> None:
    """vLLM loads each checkpoint as a model: a bare PEFT adapter directory is not one."""
    if settings.fixed_step is not None or settings.eval.backend != "vllm":
        return
    if recipe.lora is not None:
        raise T3SError(
            "probe.eval.backend 'vllm' cannot load the LoRA probe's checkpoints (bare adapters); "
            "use backend 'transformers' with recipe.lora, or train all weights"
        )
    if (Path(model_path) / "adapter_config.json").exists():
        raise T3SError(
            f"model {model_path!r} is a PEFT adapter, which probe.eval.backend 'vllm' cannot load; "
            "merge it into its base first, or use backend 'transformers'"
        )


class ProbeStage(Stage):
    """Plain SFT from θ0 with training accuracy per checkpoint; records θb (see the module docstring)."""

    name = "probe"

    def __init__(
        self,
        model_path: str,
        examples: Sequence[Example],
        items: Sequence[TokenizedExample],
        tokenizer: Any,
        tokenize_config: TokenizeConfig,
        recipe: TrainRecipe,
        settings: ProbeSettings,
        *,
        tokens_fp: str,
        trust_remote_code: bool = False,
        restart: bool = False,
    ) -> None:
        _check_eval_backend(model_path, recipe, settings)
        if Path(model_path).is_dir():  # recorded absolute, so the run works from any directory
            model_path = str(Path(model_path).resolve())
        self.model_path, self.recipe, self.settings = model_path, recipe, settings
        self.examples, self.items, self.tokens_fp = examples, items, tokens_fp
        self.tokenizer, self.tokenize_config = tokenizer, tokenize_config
        self.trust_remote_code, self.restart = trust_remote_code, restart

    def fingerprint(self, run: RunDir) -> str:
        return probe_fingerprint(self.tokens_fp, self.model_path, self.recipe, self.settings)

    def outputs_exist(self, run: RunDir) -> bool:
        return run.bottleneck_path.exists()

    def prepare(self, run: RunDir, attempt: Attempt) -> dict[str, Any]:
        if attempt.stale and not self.restart:
            raise T3SError(
                f"the probe in {run.root} was started with another model, corpus or recipe; "
                "pass --restart to discard it, or use a new run directory"
            )
        resumed = attempt.previous.get("fingerprint") == attempt.fingerprint and not self.restart
        if attempt.main:
            if self.restart:
                shutil.rmtree(run.probe_dir, ignore_errors=True)
            remove_incomplete_checkpoints(run.checkpoints_dir)
            # Every retraining reuses this recipe, so that only the mask differs from the probe's SFT.
            run.record("recipe", self.recipe.model_dump())
            run.record("probe_settings", self.settings.model_dump())
        first = attempt.previous.get("first_started") if resumed else None
        return {"model": self.model_path, "first_started": first or time.time()}

    def run(self, run: RunDir, attempt: Attempt) -> dict[str, Any]:
        import torch

        from t3s import distributed
        from t3s.models import load_model

        state = distributed.state()
        recipe, model_path = self.recipe, self.model_path
        remote = self.trust_remote_code
        run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        dtype = torch.bfloat16 if recipe.param_dtype == "bfloat16" else torch.float32
        model = load_model(model_path, device=state.device, dtype=dtype, trust_remote_code=remote)
        model = prepare_model(model, recipe)

        def load(path: Path) -> Any:
            return load_model(str(path), device=state.device, dtype=dtype, trust_remote_code=remote)

        probe = self.probe(run, attempt.fingerprint, load)
        probe.record(model, 0, None, Path(model_path))  # θ0 is its own checkpoint

        # A checkpoint saved just before a kill may not have been measured yet.
        latest = list_checkpoints(run.checkpoints_dir, resumable=True)
        if (
            latest
            and probe.needs_eval(checkpoint_step(latest[-1]))
            and checkpoint_step(latest[-1]) not in probe.evaluated()
        ):
            saved = load(latest[-1])
            probe.record(saved, checkpoint_step(latest[-1]), None, latest[-1])
            del saved
        if probe.adaptive and latest:  # its signal, and what the search asks for up to it
            saved = load(latest[-1])
            probe.note_signal(saved, checkpoint_step(latest[-1]))
            probe.advance(saved, checkpoint_step(latest[-1]), lambda k: None)
            del saved
        if not latest or checkpoint_step(latest[-1]) < recipe.steps:
            dataset = sft_dataset(self.items, [labels_for(t) for t in self.items])
            trainer = build_trainer(
                model,
                self.tokenizer,
                dataset,
                recipe,
                run.checkpoints_dir,
                callbacks=[_make_callback(probe)],
                save_steps=recipe.steps + 1,
            )
            trainer.train(resume_from_checkpoint=str(latest[-1]) if latest else None)
        probe.check_done()  # the search ran at each save, the final one included
        return self.conclude(run, probe, attempt.main)

    def probe(self, run: RunDir, fingerprint: str, load: Callable[[Path], Any] | None = None) -> Probe:
        """The probe's books and its accuracy measurement (none for a fixed step), on every process."""
        acc = (
            AccuracyProbe(
                run,
                self.examples,
                self.items,
                self.tokenizer,
                self.tokenize_config.template,
                self.settings.eval,
                fingerprint=fingerprint,
            )
            if self.settings.fixed_step is None
            else None
        )
        return Probe(run, self.settings, self.recipe, acc, load)

    def conclude(self, run: RunDir, probe: Probe, main: bool) -> dict[str, Any]:
        """After the last step: prune, write θb's record; returns what the stage records as done."""
        from t3s import distributed

        probe.prune()
        distributed.state().wait_for_everyone()
        record = _bottleneck_record(run, probe, self.model_path)
        if main:
            run.write_bottleneck(record)
        # The probe's time counts from its first start, across resumes, like its rows' wall_time.
        return {"seconds": round(time.time() - probe.started, 2)}


def _bottleneck_record(run: RunDir, probe: Probe, model_path: str) -> dict[str, Any]:
    settings, recipe = probe.settings, probe.recipe
    if settings.fixed_step is not None:
        bottleneck: dict[str, Any] = {"step": settings.fixed_step, "selected_by": "fixed_step"}
        row = next((r for r in probe.rows() if r["step"] == settings.fixed_step), None)
        bottleneck["train_accuracy"] = row["train_accuracy"] if row else None
    else:
        best = choose_bottleneck(probe.rows())
        bottleneck = {
            "step": best["step"],
            "train_accuracy": best["train_accuracy"],
            "selected_by": "min_train_accuracy",
        }
    checkpoints = {
        f"step{checkpoint_step(p)}": str(p.relative_to(run.root))
        for p in list_checkpoints(run.checkpoints_dir)
    }
    record = {
        **bottleneck,
        "base": model_path,
        "bottleneck": checkpoints.get(f"step{bottleneck['step']}"),
        "final": checkpoints.get(f"step{recipe.steps}"),
        "final_step": recipe.steps,
        "mode": settings.mode,
        "checkpoints": checkpoints,
        "search": settings.search,
    }
    rows = probe.rows()
    if rows:  # what the search cost: checkpoints measured of the grid, tokens generated and reused
        record["measured_steps"] = len(rows)
        record["grid_steps"] = len(probe.grid)
        for key in ("generated_tokens", "reused_tokens"):
            record[key] = sum(r.get(key, 0) for r in rows)
    signal = {k: v for k, v in probe.signal().items() if v is not None}
    if signal:  # the zero-generation signal's peak, to read next to θb
        record["own_answer_loss_argmax"] = max(signal, key=lambda k: (signal[k], -k))
    if record["bottleneck"] is None:
        raise T3SError(f"the bottleneck checkpoint (step {bottleneck['step']}) is not on disk")
    return record
