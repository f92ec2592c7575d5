"""Stage 0: make the pretrained SmolLM2-135M-Instruct a competent student in its own answer style.

    python -m t3s.testbed.prepare [--steps 150 --out DIR]

Trains a LoRA adapter (upper layers only, so backward stops halfway) on the student's running
partial-sum style, with a small share of the teacher's style so that the student can read it,
prints held-out greedy accuracy and wall time, and saves the adapter (fp16 safetensors) plus a
`stage0.json` record. The result ships in the package; the demo never repeats this step.

`--teacher-share P` writes a share P of the answers in the teacher's style as well, so that the
teacher's words are familiar to the student by degrees (the familiarity sweep,
`t3s.testbed.familiarity`); P = 0 rebuilds the shipped student. Checkpoints go to a sibling
directory (.NAME-trainer) every --save-steps steps: the same command resumes a killed run.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from t3s.errors import T3SError
from t3s.io import write_json
from t3s.testbed.gate import greedy_accuracy
from t3s.testbed.resume import resume_point, train_seconds_so_far, wall_clock
from t3s.testbed.task import STYLES, Numbers, TaskSpec, make_problems, problem_id, prompt

LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def stage0_rows(
    problems: list[Numbers],
    seed: int,
    mix: float,
    mix_style: str,
    teacher_share: float = 0.0,
    teacher_style: str = "reverse",
) -> list[dict[str, str]]:
    """Stage 0's corpus: each answer in `mix_style` with probability `mix`, in `teacher_style` with
    probability `teacher_share`, else in the student's own running style."""
    if mix < 0 or teacher_share < 0 or mix + teacher_share > 1:
        raise T3SError(
            f"stage 0: --mix {mix} and --teacher-share {teacher_share} must be shares summing to ≤ 1"
        )
    rng = random.Random(seed + 1)
    rows = []
    for p in problems:
        # One draw per answer whatever the shares: with teacher_share 0 the corpus is the shipped one.
        draw = rng.random()
        style = mix_style if draw < mix else teacher_style if draw < mix + teacher_share else "running"
        rows.append(
            {"id": problem_id(p), "prompt": prompt(p), "response": STYLES[style](p), "answer": str(sum(p))}
        )
    return rows


def _no_final_checkpoint() -> Any:
    """A callback that skips the checkpoint at the last step: resumed there, Trainer would train one
    step past --steps (it checks max_steps only after a step), and the adapter is saved anyway."""
    from transformers import TrainerCallback

    class NoFinalCheckpoint(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step >= state.max_steps:
                control.should_save = False
            return control

    return NoFinalCheckpoint()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, default=None, help="the AR model (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--problems", type=int, default=2000, help="distinct training problems")
    # The shipped student: sums of 3 or 4 numbers, each at most 49. Distillation then brings numbers
    # up to 99 (new arithmetic, which the teacher knows) and three-number problems only.
    ap.add_argument("--counts", default="3,4", help="how many numbers per problem, e.g. 3 or 3,4")
    ap.add_argument("--low", type=int, default=10)
    ap.add_argument("--high", type=int, default=49)
    ap.add_argument("--mix", type=float, default=0.1, help="share of answers in another style")
    # Not the teacher's: a student that already writes the teacher's style has no shock to show.
    ap.add_argument("--mix-style", default="words")
    ap.add_argument(
        "--teacher-share", type=float, default=0.0, help="share of answers in the teacher's style"
    )
    ap.add_argument("--teacher-style", default="reverse", choices=sorted(STYLES))
    ap.add_argument("--save-steps", type=int, default=25)
    ap.add_argument("--eval", type=int, default=128, help="held-out problems for the accuracy printed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "assets" / "stage0")
    args = ap.parse_args(argv)

    import torch

    from t3s.data import Example
    from t3s.models import load_model, load_tokenizer
    from t3s.testbed.smollm2 import smollm2_path
    from t3s.tokens import TokenizeConfig, tokenize_corpus
    from t3s.training import (
        LoraSettings,
        TrainRecipe,
        build_trainer,
        checkpoint_step,
        prepare_model,
        sft_dataset,
    )

    start = time.time()
    spec = TaskSpec(tuple(int(c) for c in args.counts.split(",")), args.low, args.high)
    base = str(args.base or smollm2_path())
    tokenizer = load_tokenizer(base)
    problems = make_problems(spec, args.problems, args.seed)
    rows = stage0_rows(problems, args.seed, args.mix, args.mix_style, args.teacher_share, args.teacher_style)
    examples = [Example(r["id"], r["prompt"], r["response"], r["answer"]) for r in rows]
    items, _ = tokenize_corpus(tokenizer, examples, TokenizeConfig(template="plain", max_length=256))
    model = load_model(base, dtype=torch.float32)
    layers = model.config.num_hidden_layers
    recipe = TrainRecipe(
        steps=args.steps, batch_size=args.batch_size, micro_batch_size=args.batch_size, lr=args.lr,
        scheduler="cosine", warmup_steps=10, seed=args.seed, adam_beta2=0.999,
        lora=LoraSettings(r=args.rank, alpha=2 * args.rank, target_modules=LLAMA_LINEAR, layers=list(range(layers // 2, layers))),
    )  # fmt: skip
    torch.manual_seed(args.seed)  # LoRA's draw: Trainer seeds only after the model is built
    model = prepare_model(model, recipe)
    out_dir = args.out.parent / f".{args.out.name}-trainer"
    latest = resume_point(out_dir)
    before, begin = train_seconds_so_far(latest), time.time()
    trainer = build_trainer(
        model, tokenizer, sft_dataset(items), recipe, out_dir, save_steps=args.save_steps, save_total_limit=1,
        callbacks=[wall_clock(before), _no_final_checkpoint()],
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=str(latest) if latest else None)
    train_seconds = before + time.time() - begin
    heldout = make_problems(spec, args.eval, args.seed + 1000, exclude=set(problems))
    acc, _ = greedy_accuracy(model, tokenizer, heldout)
    model.half()  # the shipped adapter: fp16 is plenty for a LoRA delta and halves its size
    model.save_pretrained(args.out)
    (args.out / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    model.float()
    record: dict[str, Any] = {
        "spec": asdict(spec), "args": {k: str(v) for k, v in vars(args).items()},
        "resumed_from_step": checkpoint_step(latest) if latest else 0, "heldout_accuracy": acc, "heldout_problems": len(heldout),
        "train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - start, 1),
        "device": str(next(model.parameters()).device), "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    write_json(args.out / "stage0.json", record)
    import shutil

    shutil.rmtree(out_dir, ignore_errors=True)
    print(f"stage 0: held-out greedy accuracy {acc:.3f} on {len(heldout)} problems; "
          f"training {train_seconds:.0f} s, total {record['total_seconds']:.0f} s -> {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
