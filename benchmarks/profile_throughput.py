"""`t3s profile` against its limit: tokens/s beside a bare forward, and peak memory by sequence length.

The profile runs two models (θ0 and θb) over every token, so its limit is half the tokens/s of a
bare `model(input_ids)` forward of one model over the same batches. Both are timed in one process,
interleaved (bare, profile, bare, profile, ...), so load on the machine hits both alike. The
profile arm is `t3s.profile.build_profile` end to end (model loads, fingerprints, the full-forward
check, Parquet writes) with a fresh cache each time; its scoring time alone (`score`) is timed
inside the same run. θb is θ0 with small noise added, saved once to a temporary directory.

Peak memory: one sequence of each length is scored in a fresh subprocess; the figure is the
increase over the loaded model (CUDA: `max_memory_allocated`; CPU: the RSS high-water mark,
VmHWM, reset after loading). The naive figure beside it is one float32 [T x vocab] logits tensor.
`--layers N` keeps the first N decoder layers only, for machines too slow for the full depth: under
inference mode one layer's activations live at a time, so the working memory is the full depth's;
the throughput ratio is a lower bound, since the output layer, where the profile does more work
than a bare forward, then weighs more.

    python benchmarks/profile_throughput.py [--model PATH] [--lengths 1024 8192] [--tokens 8192]
        [--reps 2] [--memory 2048 8192 32768] [--layers N] [--device auto]

Without --model it uses the built-in SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# Share of each synthetic sequence that is prompt (unscored); the rest is response, as in traces.
PROMPT_SHARE = 8


def synthetic_items(length: int, count: int, vocab: int, seed: int = 0) -> list[Any]:
    """`count` random sequences of `length` tokens, the first eighth prompt, the rest response."""
    from t3s.tokens import TokenizedExample

    rng = np.random.default_rng(seed)
    return [
        TokenizedExample(f"s{i}", rng.integers(0, vocab, length).tolist(), length // PROMPT_SHARE, length)
        for i in range(count)
    ]


def model_copy(path: str, out: Path, *, noise: float = 0.0, layers: int | None = None) -> str:
    """`path` saved to `out`, plus Gaussian `noise` (a θb with θ0's cost but other weights, so another
    fingerprint) and cut to its first `layers` decoder layers if asked."""
    import torch

    from t3s.models import load_model, load_tokenizer

    model = load_model(path, device=torch.device("cpu"), dtype=torch.float32)
    if layers is not None:
        _truncate(model, layers)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    model.save_pretrained(out)
    load_tokenizer(path).save_pretrained(out)
    return str(out)


def _truncate(model: Any, layers: int) -> None:
    model.get_decoder().layers = model.get_decoder().layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward_seconds(model: Any, items: list[Any], max_batch_tokens: int) -> float:
    """`model(input_ids)` over the batches the profile makes of `items` (same grouping, same padding)."""
    import torch

    from t3s.confidence import batches_by_tokens

    device = next(model.parameters()).device
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches_by_tokens([len(t.input_ids) for t in items], max_batch_tokens):
            ids = torch.tensor([items[i].input_ids for i in batch], device=device)
            model(input_ids=ids)
    _sync(device)
    return time.perf_counter() - start


class _ScoreTimer:
    """Wraps `t3s.profile.score` to add up the time spent scoring inside an end-to-end profile."""

    def __init__(self) -> None:
        import importlib

        # `t3s.profile` is the API function; the module of that name is reached by import.
        module = importlib.import_module("t3s.profile")
        self.module, self.inner, self.seconds = module, module.score, 0.0

    def __enter__(self) -> _ScoreTimer:
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            start = time.perf_counter()
            yield from self.inner(*args, **kwargs)
            self.seconds += time.perf_counter() - start

        self.module.score = timed
        return self

    def __exit__(self, *exc: Any) -> None:
        self.module.score = self.inner


def profile_seconds(
    models: dict[str, str], items: list[Any], work: Path, **scoring: Any
) -> tuple[float, float]:
    """(end-to-end, scoring-only) seconds of `build_profile` over `items`, from an empty cache."""
    from t3s.profile import build_profile
    from t3s.tokens import tokens_fingerprint

    work.mkdir(parents=True)
    with _ScoreTimer() as timer:
        start = time.perf_counter()
        build_profile(models, items, tokens_fingerprint(items), work / "p.parquet", work / "cache", **scoring)
        total = time.perf_counter() - start
    return total, timer.seconds


def throughput(
    theta0: str, thetab: str, length: int, tokens: int, reps: int, work: Path, device: str, dtype: str | None
) -> dict[str, Any]:
    """Tokens/s of the bare forward and of the profile at one sequence length, and their ratios."""
    from t3s.models import load_model, resolve_dtype
    from t3s.profile import scoring_dtype

    dev, dtype_name = scoring_dtype(device, dtype)
    model = load_model(theta0, device=dev, dtype=resolve_dtype(dtype_name, dev))
    items = synthetic_items(length, max(1, tokens // length), model.config.vocab_size)
    n = sum(len(t.input_ids) for t in items)
    batch_tokens = max(16384, length)
    bare_forward_seconds(model, synthetic_items(min(length, 256), 1, model.config.vocab_size), batch_tokens)
    bare, e2e, scored = [], [], []
    for r in range(reps):  # interleaved, so drift on a shared machine hits both arms alike
        bare.append(n / bare_forward_seconds(model, items, batch_tokens))
        total, scoring = profile_seconds(
            {"base": theta0, "bottleneck": thetab}, items, work / f"L{length}-r{r}",
            device=device, dtype=dtype, max_batch_tokens=batch_tokens,
        )  # fmt: skip
        e2e.append(n / total)
        scored.append(n / scoring)
    limit = float(np.mean(bare)) / 2
    return {
        "length": length, "sequences": len(items), "tokens": n, "bare_tok_s": bare,
        "profile_tok_s": e2e, "scoring_tok_s": scored,
        "ratio": float(np.mean(e2e)) / limit, "scoring_ratio": float(np.mean(scored)) / limit,
    }  # fmt: skip


def _vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_child(
    model_path: str, length: int, layers: int | None, device: str, dtype: str | None
) -> dict[str, Any]:
    """Score one sequence of `length` tokens; the peak memory above the loaded model, in bytes."""
    import torch

    from t3s.confidence import score
    from t3s.models import load_model, resolve_dtype
    from t3s.profile import scoring_dtype

    dev, dtype_name = scoring_dtype(device, dtype)
    model = load_model(model_path, device=dev, dtype=resolve_dtype(dtype_name, dev))
    if layers is not None:
        _truncate(model, layers)
    items = synthetic_items(length, 1, model.config.vocab_size)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        base = _vm_hwm_bytes()
    start = time.perf_counter()
    values = dict(score(model, items, max_batch_tokens=max(16384, length)))[0]
    _sync(dev)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _vm_hwm_bytes()
    if not np.isfinite(values[length // PROMPT_SHARE :]).all():
        raise RuntimeError(f"non-finite log-probs at length {length}")
    return {
        "length": length, "peak_bytes": peak - base, "seconds": seconds, "vocab": model.config.vocab_size,
        "naive_logits_bytes": length * model.config.vocab_size * 4, "layers": len(model.get_decoder().layers),
    }  # fmt: skip


def peak_memory(
    model_path: str, length: int, layers: int | None, device: str, dtype: str | None
) -> dict[str, Any]:
    """`memory_child` in a fresh process, so that no earlier allocation hides or inflates the peak."""
    cmd = [sys.executable, __file__, "--model", model_path, "--memory-child", str(length), "--device", device]
    cmd += ["--layers", str(layers)] if layers is not None else []
    cmd += ["--dtype", dtype] if dtype else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"memory at {length} tokens failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def print_throughput(rows: list[dict[str, Any]]) -> None:
    print("\n| tokens/seq | sequences | bare forward tok/s | limit (bare/2) | t3s profile tok/s | ratio | scoring tok/s | scoring ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        bare = float(np.mean(r["bare_tok_s"]))
        print(
            f"| {r['length']} | {r['sequences']} | {bare:.1f} ({', '.join(f'{v:.1f}' for v in r['bare_tok_s'])}) "
            f"| {bare / 2:.1f} | {np.mean(r['profile_tok_s']):.1f} ({', '.join(f'{v:.1f}' for v in r['profile_tok_s'])}) "
            f"| **{r['ratio']:.3f}** | {np.mean(r['scoring_tok_s']):.1f} | {r['scoring_ratio']:.3f} |"
        )


def print_memory(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| tokens (1 sequence) | layers | scoring s | peak above weights | naive [T x vocab] float32 logits |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['length']} | {r['layers']} | {r['seconds']:.1f} | {gb(r['peak_bytes'])} | {gb(r['naive_logits_bytes'])} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--lengths", type=int, nargs="*", default=[1024, 8192], help="tokens per sequence")
    ap.add_argument("--tokens", type=int, default=8192, help="tokens per length (at least one sequence)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument(
        "--memory", type=int, nargs="*", default=[2048, 8192, 32768], help="lengths for peak memory"
    )
    ap.add_argument("--layers", type=int, default=None, help="keep the first N decoder layers only")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default=None, help="scoring dtype (default: bf16 on GPUs, float32 on CPUs)")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    from t3s.testbed.smollm2 import smollm2_path

    path = args.model or str(smollm2_path())
    if args.memory_child is not None:
        print(json.dumps(memory_child(path, args.memory_child, args.layers, args.device, args.dtype)))
        return
    import torch

    rows = []
    with tempfile.TemporaryDirectory(prefix="t3s-profile-bench-") as tmp:
        if args.lengths:
            theta0 = (
                path if args.layers is None else model_copy(path, Path(tmp) / "theta0", layers=args.layers)
            )
            thetab = model_copy(path, Path(tmp) / "thetab", noise=1e-3, layers=args.layers)
            for length in args.lengths:
                row = throughput(
                    theta0, thetab, length, args.tokens, args.reps, Path(tmp), args.device, args.dtype
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
    memory = []
    for length in args.memory:
        memory.append(peak_memory(path, length, args.layers, args.device, args.dtype))
        print(json.dumps(memory[-1]), flush=True)
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(f"\nmodel {path} on {device}")
    if rows:
        print_throughput(rows)
    if memory:
        print_memory(memory)


if __name__ == "__main__":
    main()
