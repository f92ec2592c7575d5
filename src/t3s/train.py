"""The train stage: from θ0, on a masked dataset, with the probe's recipe; only the mask differs."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from t3s.errors import T3SError
from t3s.fingerprint import digest, model_fingerprint
from t3s.io import write_jsonl
from t3s.rundir import RunDir
from t3s.selection import file_digest
from t3s.tokens import TokenizedExample
from t3s.training import (
    NonFiniteLoss,
    TrainRecipe,
    build_trainer,
    list_checkpoints,
    log_history_rows,
    prepare_model,
    remove_incomplete_checkpoints,
    sft_dataset,
)


def read_masks(masks_dir: Path) -> tuple[list[TokenizedExample], list[list[int]]]:
    path = masks_dir / "data.parquet"
    if not path.exists():
        raise T3SError(f"{masks_dir}: no masked dataset; run `t3s select` first")
    rows = pq.read_table(path).to_pylist()
    items = [TokenizedExample(r["id"], r["input_ids"], r["response_start"], r["response_end"]) for r in rows]
    return items, [r["labels"] for r in rows]


def run_recipe(run: RunDir) -> TrainRecipe:
    recipe = run.manifest().get("recipe")
    if recipe is None:
        raise T3SError(f"run {run.root} records no training recipe; run `t3s probe` first")
    return TrainRecipe(**recipe)


def train_policy(
    run_path: str | Path,
    name: str,
    *,
    base: str | None = None,
    recipe: TrainRecipe | None = None,
    save_every: int = 10,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Train θ0 on RUN/masks/<name> into RUN/train/<name>/model; resumable from its last checkpoint."""
    import torch
    from accelerate import PartialState

    from t3s.models import load_model, load_tokenizer

    state = PartialState()
    run = RunDir(run_path)
    recipe = recipe or run_recipe(run)
    base = base or run.resolve(run.manifest().get("probe", {}).get("base", ""))
    if not base:
        raise T3SError(f"run {run.root} has no base model recorded; run `t3s probe` first")
    masks = run.masks_dir(name)
    items, labels = read_masks(masks)
    out = run.train_dir(name)
    fp = digest(
        file_digest(masks / "data.parquet"), model_fingerprint(base), recipe.model_dump(exclude={"report_to"})
    )
    stage = f"train:{name}"
    if run.stage_done(stage, fp) and (out / "model" / "config.json").exists():
        return run.stage(stage)["summary"]
    info = run.stage(stage)
    if info.get("fingerprint") not in (None, fp) and state.is_main_process:
        shutil.rmtree(out, ignore_errors=True)  # another mask or recipe: its checkpoints are not ours
    state.wait_for_everyone()
    ckpt_dir = out / "checkpoints"
    if state.is_main_process:
        remove_incomplete_checkpoints(ckpt_dir)
        run.set_stage(stage, status="running", fingerprint=fp, started=time.ctime())
    start = time.time()
    tokenizer = load_tokenizer(base, trust_remote_code=trust_remote_code)
    dtype = torch.bfloat16 if recipe.param_dtype == "bfloat16" else torch.float32
    model = prepare_model(
        load_model(base, device=state.device, dtype=dtype, trust_remote_code=trust_remote_code), recipe
    )
    trainer = build_trainer(
        model, tokenizer, sft_dataset(items, labels), recipe, ckpt_dir, save_steps=save_every
    )
    latest = list_checkpoints(ckpt_dir, resumable=True)
    trainer.args.save_total_limit = 1
    try:
        trainer.train(resume_from_checkpoint=str(latest[-1]) if latest else None)
    except NonFiniteLoss as exc:
        # Keep the log up to and including the bad step; no model is written and the stage is not done.
        message = f"train {name}: non-finite loss ({exc.loss}) at step {exc.step}; see {out / 'log.jsonl'}"
        if state.is_main_process:
            write_jsonl(out / "log.jsonl", log_history_rows(trainer))
            run.set_stage(stage, status="failed", error=message)
        raise T3SError(message) from exc
    tmp = out / ".model.tmp"
    if recipe.lora is not None:
        trainer.model = trainer.model.merge_and_unload()  # a plain checkpoint, for eval and RRT alike
    trainer.save_model(str(tmp))
    rows = log_history_rows(trainer)
    summary = {"base": base, "masks": str(masks.relative_to(run.root)), "steps": recipe.steps,
               "final_loss": rows[-1]["loss"] if rows else None}  # fmt: skip
    if state.is_main_process:
        tokenizer.save_pretrained(str(tmp))
        if (out / "model").exists():
            shutil.rmtree(out / "model")
        os.replace(tmp, out / "model")
        write_jsonl(out / "log.jsonl", rows)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        run.set_stage(stage, status="done", fingerprint=fp, summary=summary, finished=time.ctime(),
                      seconds=round(time.time() - start, 2))  # fmt: skip
    state.wait_for_everyone()
    return summary
