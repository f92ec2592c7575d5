"""Masked training costs what plain SFT costs, and t3s's trainer what TRL's SFTTrainer costs.

The mask is only `labels` = -100, so the forward and backward passes are the same; this prints
the throughput of each on the same model, data and recipe, and their ratio. The third arm trains
the same masked data (`input_ids` + `labels`, what `t3s export` writes) with TRL's SFTTrainer
under the same recipe (TRL's defaults otherwise, but no gradient checkpointing, as t3s's recipe).

    python benchmarks/masked_training.py [--model PATH] [--steps 6] [--drop 0.2] [--no-trl]

Without --model it uses the built-in SmolLM2-135M-Instruct (upper half trained, as the testbed
does). On a GPU pass any causal LM directory.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--drop", type=float, default=0.2, help="share of response tokens masked")
    ap.add_argument("--freeze-layers", type=int, default=15)
    ap.add_argument("--no-trl", action="store_true", help="skip the TRL SFTTrainer arm")
    args = ap.parse_args()

    import torch

    from t3s.data import Example
    from t3s.models import load_model, load_tokenizer
    from t3s.testbed.smollm2 import smollm2_path
    from t3s.testbed.task import STYLES, TaskSpec, make_problems, problem_id, prompt
    from t3s.tokens import TokenizeConfig, tokenize_corpus
    from t3s.training import TrainRecipe, build_trainer, labels_for, prepare_model, sft_dataset

    path = args.model or str(smollm2_path())
    tokenizer = load_tokenizer(path)
    problems = make_problems(TaskSpec(), args.batch_size * args.steps, seed=0)
    examples = [Example(problem_id(p), prompt(p), STYLES["reverse"](p), str(sum(p))) for p in problems]
    items, _ = tokenize_corpus(tokenizer, examples, TokenizeConfig(template="plain"))
    rng = np.random.default_rng(0)
    masks = {
        "unmasked": [labels_for(t) for t in items],
        "masked": [labels_for(t, rng.random(len(t.input_ids)) >= args.drop) for t in items],
    }
    tokens = sum(len(t.input_ids) for t in items)
    recipe = TrainRecipe(steps=args.steps, batch_size=args.batch_size, micro_batch_size=args.batch_size, lr=1e-5,
                         freeze_layers=args.freeze_layers, freeze_embeddings=args.freeze_layers > 0)  # fmt: skip
    arms = ["unmasked", "masked"] + ([] if args.no_trl else ["trl-masked"])
    results: dict[str, list[float]] = {}
    for name in arms * 2:  # interleaved, so drift hits every arm alike
        model = prepare_model(load_model(path, dtype=torch.float32), recipe)
        dataset = sft_dataset(items, masks[name.removeprefix("trl-")])
        if name.startswith("trl-"):
            trainer = trl_trainer(model, tokenizer, dataset, recipe, f"/tmp/bench-{name}")
        else:
            trainer = build_trainer(
                model, tokenizer, dataset, recipe, f"/tmp/bench-{name}", save_steps=args.steps + 1
            )
        start = time.perf_counter()
        trainer.train()
        results.setdefault(name, []).append(tokens / (time.perf_counter() - start))
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"\nmodel {path} on {device}; {args.steps} steps x {args.batch_size} examples, {tokens} tokens per run"
    )
    for name, rates in results.items():
        print(f"{name:>10}: {np.mean(rates):8.1f} tokens/s  (runs: {', '.join(f'{r:.1f}' for r in rates)})")
    print(f"     ratio: masked / unmasked = {np.mean(results['masked']) / np.mean(results['unmasked']):.3f}")
    if "trl-masked" in results:
        print(
            f"     ratio: t3s / TRL SFTTrainer = {np.mean(results['masked']) / np.mean(results['trl-masked']):.3f}"
        )


def trl_trainer(model: Any, tokenizer: Any, dataset: Any, recipe: Any, output_dir: str) -> Any:
    """TRL's SFTTrainer on the same pre-tokenized data with the arguments t3s derives from `recipe`."""
    from trl import SFTConfig, SFTTrainer

    from t3s.training import training_arguments

    ours = training_arguments(recipe, Path(output_dir))
    same = ["max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
            "lr_scheduler_type", "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2", "max_grad_norm",
            "optim", "seed", "bf16", "use_cpu", "logging_steps"]  # fmt: skip
    args = SFTConfig(
        output_dir=output_dir,
        max_length=None,  # the data is already tokenized: no re-truncation
        gradient_checkpointing=False,  # TRL's default is on; t3s's recipe has it off
        report_to="none",
        save_strategy="no",
        **{k: getattr(ours, k) for k in same},
    )
    return SFTTrainer(model=model, processing_class=tokenizer, train_dataset=dataset, args=args)


if __name__ == "__main__":
    main()
