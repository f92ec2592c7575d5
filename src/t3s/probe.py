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
`t3s.callback.T3SCallback` runs the same probe (this stage's books, `Probe`, `AccuracyProbe`) inside
a user's own Trainer.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from t3s.backends import BackendOptions, BackendSpec, make_backend
from t3s.data import Example
from t3s.errors import T3SError
from t3s.fingerprint import digest, model_fingerprint
from t3s.generation import SampledSettings
from t3s.io import append_jsonl, write_jsonl
from t3s.masks import labels_for
from t3s.rundir import RunDir
from t3s.sampling import accuracy, check_verifier_errors, sample_and_verify
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
        steps.update(range(settings.eval.every, recipe.steps + 1, settings.eval.every))
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

    def _local_measure(self, model: Any, step: int, checkpoint: Path, index: Sequence[int]) -> list[Any]:
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
        train = [self.items[i] for i in index if i < len(self.items)]
        nll, tokens = 0.0, 0
        if train and self.settings.loss:
            was_training = model.training
            model.eval()
            from t3s.confidence import score

            nll = -sum(float(np.nansum(v)) for _, v in score(model, train))
            model.train(was_training)
            tokens = sum(t.response_end - max(t.response_start, 1) for t in train)
        return [tagged, nll, tokens]

    def measure(self, model: Any, step: int, checkpoint: Path) -> dict[str, Any] | None:
        """Measure `model`, saved at `checkpoint` (θ0: the model's own directory), on every process
        (each a share of the prompts); the main process gets the row."""
        from accelerate.utils import gather_object

        from t3s import distributed

        state = distributed.state()
        with state.split_between_processes(list(range(len(self.prompts)))) as mine:
            local = self._local_measure(model, step, checkpoint, mine)
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


def _train_loss(log_history: Sequence[dict[str, Any]], step: int) -> float | None:
    for row in reversed(log_history):
        if row.get("step") == step and "loss" in row:
            return float(row["loss"])
    return None


class Probe:
    """State shared by the callback and the driver: metrics, pruning, the running minimum."""

    def __init__(
        self, run: RunDir, settings: ProbeSettings, recipe: TrainRecipe, accuracy_probe: AccuracyProbe | None
    ) -> None:
        self.run, self.settings, self.recipe = run, settings, recipe
        self.accuracy = accuracy_probe
        self.save_steps = save_steps(recipe, settings)
        # Wall time counts from the probe's first start, so a resumed probe's times stay comparable.
        self.started = float(run.stage("probe").get("first_started", time.time()))

    def rows(self) -> list[dict[str, Any]]:
        return self.run.probe_metrics()

    def evaluated(self) -> set[int]:
        return {r["step"] for r in self.rows()}

    def needs_eval(self, step: int) -> bool:
        if self.accuracy is None:
            return False
        return (
            step == 0
            or (self.settings.fixed_step is None and step % self.settings.eval.every == 0)
            or (step == self.recipe.steps)
        )

    def record(self, model: Any, step: int, loss: float | None, checkpoint: Path) -> dict[str, Any] | None:
        """Measure `step` if due and not measured yet; the main process gets the row it appended."""
        if not self.needs_eval(step) or step in self.evaluated():
            return None
        assert self.accuracy is not None
        row = self.accuracy.measure(model, step, checkpoint)
        if row is not None:  # only the main process gets the row
            row = {"step": step, "train_loss": loss, **{k: v for k, v in row.items() if k != "step"}}
            row["wall_time"] = round(time.time() - self.started, 2)
            append_jsonl(self.run.metrics, row)
        return row

    def keep(self) -> set[int]:
        keep = {*self.settings.keep_steps}
        if self.settings.fixed_step is not None:
            keep.add(self.settings.fixed_step)
        rows = [r for r in self.rows() if r["step"] > 0]
        if rows:
            keep.add(choose_bottleneck(rows)["step"])
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
            probe.record(model, step, _train_loss(state.log_history, step), ckpt)
            probe.prune()
            return control

    return ProbeCallback()


def probe_fingerprint(tokens_fp: str, model: str, recipe: TrainRecipe, settings: ProbeSettings) -> str:
    # The mode and kept steps decide only what stays on disk, not the trajectory; the error limit
    # only whether a measurement stands.
    measured = settings.model_dump(
        exclude={"mode": True, "keep_steps": True, "eval": {"max_verifier_errors"}}
    )
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
        probe = self.probe(run, attempt.fingerprint)
        probe.record(model, 0, None, Path(model_path))  # θ0 is its own checkpoint

        # A checkpoint saved just before a kill may not have been measured yet.
        latest = list_checkpoints(run.checkpoints_dir, resumable=True)
        if (
            latest
            and probe.needs_eval(checkpoint_step(latest[-1]))
            and checkpoint_step(latest[-1]) not in probe.evaluated()
        ):
            saved = load_model(str(latest[-1]), device=state.device, dtype=dtype, trust_remote_code=remote)
            probe.record(saved, checkpoint_step(latest[-1]), None, latest[-1])
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
        return self.conclude(run, probe, attempt.main)

    def probe(self, run: RunDir, fingerprint: str) -> Probe:
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
        return Probe(run, self.settings, self.recipe, acc)

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
    }
    if record["bottleneck"] is None:
        raise T3SError(f"the bottleneck checkpoint (step {bottleneck['step']}) is not on disk")
    return record
