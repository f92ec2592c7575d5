"""dLLM stage 0: the stage-0 student made a masked-diffusion student of the same task, in its own style.

    python -m t3s.testbed.dllm_prepare [--steps 200 --out DIR]

Converts the merged stage-0 student (`t3s.testbed.student.student_path`) with `t3s.dllm.a2d.to_dllm`
(a mask token, its embedding row, bidirectional attention) and adapts it with the masked-diffusion
objective (`t3s.dllm.training`) on stage 0's corpus: a LoRA adapter (all layers by default: the lower
ones now attend both ways and see mask tokens too) plus the mask token's embedding row (peft's
trainable tokens: no LoRA of a linear layer reaches an embedding row, and the row, the mean of the
others, means nothing to the model yet). Held-out greedy accuracy is measured with the diffusion
sampler; the adapter (fp16 safetensors) and a `dllm-stage0.json` record are saved to --out.
Checkpoints go to a sibling directory (.NAME-trainer) every --save-steps steps and the last one
stays: the same command resumes a killed run, and with the constant learning rate a larger --steps
continues a finished run exactly as one longer run would have gone.

No adapter ships yet: the first run (31 steps of batch 8, 2544 s on 2 shared CPU cores at load ~8,
loss 7.1 -> ~2.2) answered 0/16 held-out problems (the stage-0 AR student: 0.81); see
benchmarks/RESULTS.md. `t3s.testbed.student.dllm_student_path` builds the student once one does.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from t3s.errors import T3SError
from t3s.io import write_json
from t3s.testbed.prepare import LLAMA_LINEAR, stage0_rows
from t3s.testbed.resume import resume_point, train_seconds_so_far, wall_clock
from t3s.testbed.student import DLLM_STAGE0, STAGE0
from t3s.testbed.task import TaskSpec, make_problems, style_of


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--base", type=Path, default=None, help="the AR checkpoint (default: the stage-0 student)"
    )
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rank", type=int, default=16)
    # Stage 0 adapts the upper half so that backward stops halfway; the mask row's gradient flows
    # through every layer anyway, and the lower layers too now attend both ways and see mask tokens.
    ap.add_argument("--lora-layers", choices=["upper", "all"], default="all")
    ap.add_argument("--objective", choices=["mdm", "block"], default="mdm")
    ap.add_argument("--train-block", type=int, default=32, help="block diffusion: block size in training")
    # The sampler starts every block fully masked: training covers t up to 1 (LLaDA), not dFactory's 0.8.
    ap.add_argument("--t-min", type=float, default=0.1)
    ap.add_argument("--t-max", type=float, default=1.0)
    # Stage 0's corpus: the same problems, styles and mixture (t3s.testbed.prepare).
    ap.add_argument("--problems", type=int, default=2000)
    ap.add_argument("--counts", default="3,4")
    ap.add_argument("--low", type=int, default=10)
    ap.add_argument("--high", type=int, default=49)
    ap.add_argument("--mix", type=float, default=0.1)
    ap.add_argument("--mix-style", default="words")
    # Answers take 30-47 tokens and an EOS: 48 new tokens, three semi-autoregressive blocks of 16.
    ap.add_argument("--gen-length", type=int, default=48)
    ap.add_argument("--block-length", type=int, default=16)
    ap.add_argument("--denoise-steps", type=int, default=12, help="denoising steps over the whole answer")
    ap.add_argument("--eval", type=int, default=64, help="held-out problems for the accuracy printed")
    ap.add_argument("--eval-batch-size", type=int, default=32)
    ap.add_argument("--save-steps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DLLM_STAGE0)
    args = ap.parse_args(argv)
    if args.eval < 1:
        ap.error("--eval: at least one held-out problem")
    return args


def build_student(base: str, args: argparse.Namespace) -> tuple[Any, Any, int]:
    """The A2D conversion of `base` with a fresh LoRA adapter; returns (model, tokenizer, mask id)."""
    import torch

    from t3s.dllm.a2d import to_dllm
    from t3s.models import load_model, load_tokenizer
    from t3s.training import prepare_model

    tokenizer = load_tokenizer(base)
    torch.manual_seed(args.seed)  # the mask row's init (transformers' mean resizing) and LoRA's draw
    model, mask_id = to_dllm(load_model(base, device=torch.device("cpu"), dtype=torch.float32), tokenizer)
    model = prepare_model(model, recipe(args, model.config.num_hidden_layers), trainable_tokens=[mask_id])
    return model, tokenizer, mask_id


def recipe(args: argparse.Namespace, layers: int) -> Any:
    from t3s.training import LoraSettings, TrainRecipe

    # Constant after warmup: a run of N steps is the prefix of a longer run, which can resume from it.
    return TrainRecipe(
        steps=args.steps, batch_size=args.batch_size, micro_batch_size=args.batch_size, lr=args.lr,
        scheduler="constant_with_warmup", warmup_steps=args.warmup, seed=args.seed, adam_beta2=0.999,
        lora=LoraSettings(r=args.rank, alpha=2 * args.rank, target_modules=LLAMA_LINEAR, layers=list(range(layers // 2 if args.lora_layers == "upper" else 0, layers))),
    )  # fmt: skip


def train(
    model: Any, tokenizer: Any, args: argparse.Namespace, spec: TaskSpec, trainer_dir: Path
) -> tuple[Any, int, float]:
    """Masked-diffusion training on stage 0's corpus, resumed from the latest checkpoint in `trainer_dir`;
    returns the trainer, the step it resumed from and the training seconds of all runs to this step."""
    from t3s.data import Example
    from t3s.dllm.training import DiffusionSettings, build_diffusion_trainer, diffusion_dataset
    from t3s.tokens import TokenizeConfig, tokenize_corpus
    from t3s.training import checkpoint_step

    problems = make_problems(spec, args.problems, args.seed)
    rows = stage0_rows(problems, args.seed, args.mix, args.mix_style)
    examples = [Example(r["id"], r["prompt"], r["response"], r["answer"]) for r in rows]
    items, _ = tokenize_corpus(tokenizer, examples, TokenizeConfig(template="plain", max_length=256))
    settings = DiffusionSettings(
        objective=args.objective, block_size=args.train_block, t_min=args.t_min, t_max=args.t_max
    )
    latest = resume_point(trainer_dir)
    if latest is not None and checkpoint_step(latest) >= args.steps:
        # Trainer checks max_steps only after a step: resumed there, it would train one step more.
        raise T3SError(f"{latest}: already at --steps {args.steps}; pass more steps to continue")
    before = train_seconds_so_far(latest)
    start = time.time()
    trainer = build_diffusion_trainer(
        model, tokenizer, diffusion_dataset(items), recipe(args, model.config.num_hidden_layers), settings,
        trainer_dir, callbacks=[wall_clock(before)], save_steps=args.save_steps, save_total_limit=1,
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=str(latest) if latest else None)
    return trainer, checkpoint_step(latest) if latest else 0, before + time.time() - start


def evaluate(model: Any, tokenizer: Any, args: argparse.Namespace, spec: TaskSpec) -> dict[str, Any]:
    """Held-out greedy accuracy with the diffusion sampler, answer lengths and the share in the own style."""
    from t3s.dllm.sampler import DiffusionSampling
    from t3s.sampling import accuracy
    from t3s.testbed.gate import greedy_records

    train_set = set(make_problems(spec, args.problems, args.seed))
    heldout = make_problems(spec, args.eval, args.seed + 1000, exclude=train_set)
    sampling = DiffusionSampling(steps=args.denoise_steps, block_length=args.block_length)
    model.eval()
    records = greedy_records(
        model, tokenizer, heldout, max_new_tokens=args.gen_length, batch_size=args.eval_batch_size,
        diffusion=sampling,
    )  # fmt: skip
    tokens = [r.num_tokens for r in records if r.num_tokens is not None]
    return {
        "heldout_accuracy": accuracy(records),
        "heldout_problems": len(heldout),
        "own_style_share": sum(style_of(r.completion) == "running" for r in records) / len(records),
        "mean_generated_tokens": sum(tokens) / len(tokens) if tokens else None,
        "sampling": sampling.model_dump(),
        "gen_length": args.gen_length,
        "examples": [r.completion for r in records[:4]],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)

    import torch

    from t3s.fingerprint import model_fingerprint
    from t3s.testbed.student import student_path
    from t3s.training import log_history_rows

    start = time.time()
    spec = TaskSpec(tuple(int(c) for c in args.counts.split(",")), args.low, args.high)
    base = str(args.base or student_path())
    model, tokenizer, mask_id = build_student(base, args)
    trainer_dir = args.out.parent / f".{args.out.name}-trainer"
    trainer, resumed, train_seconds = train(model, tokenizer, args, spec, trainer_dir)
    history = log_history_rows(trainer)
    result = evaluate(model, tokenizer, args, spec)
    model.half()  # fp16 is plenty for a LoRA delta and halves the adapter
    # The mask row travels as a trainable-tokens delta; the whole (resized) embedding must not.
    model.save_pretrained(args.out, save_embedding_layers=False)
    (args.out / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    model.float()
    record: dict[str, Any] = {
        "spec": asdict(spec), "args": {k: str(v) for k, v in vars(args).items()},
        "base": "stage-0 student" if args.base is None else str(args.base),
        "stage0_fingerprint": model_fingerprint(STAGE0) if args.base is None else None,
        "mask_token_id": mask_id, **result,
        "steps_run": trainer.state.global_step, "resumed_from_step": resumed,
        "loss": [row.get("loss") for row in history if "loss" in row],
        # Training: all runs up to the last step; total: this invocation (a resumed one is shorter).
        "train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - start, 1),
        "device": str(next(model.parameters()).device), "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    write_json(args.out / "dllm-stage0.json", record)
    print(f"dLLM stage 0: held-out greedy accuracy {result['heldout_accuracy']:.3f} on "
          f"{result['heldout_problems']} problems ({result['own_style_share']:.0%} in the own style, "
          f"{result['mean_generated_tokens']} tokens on average); training {train_seconds:.0f} s, "
          f"total {record['total_seconds']:.0f} s -> {args.out}")  # fmt: skip
    return record


if __name__ == "__main__":
    main()
