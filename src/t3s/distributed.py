"""The processes of one t3s job: every stage joins the same group, on GPUs and on CPUs.

On GPUs a job is started with `accelerate launch ... -m t3s ...`, on CPUs with
`torchrun --nproc_per_node N -m t3s ...` (`accelerate launch --cpu` starts one process unless MPI
is installed). accelerate's shared state (`PartialState`) is created once per process, by whoever
asks first, and joins the processes of a CPU-only job only when created with `cpu=True`: created
bare, each process reports rank 0 of 1 and does all the work and all the writing. So t3s asks for
it here only, and HF Trainer, which re-creates it from `TrainingArguments.use_cpu`, gets `on_cpu()`.
"""

from __future__ import annotations

import os
from typing import Any

from t3s.errors import T3SError


def on_cpu() -> bool:
    """The job runs on CPUs: no CUDA device, or accelerate was told `--cpu` (ACCELERATE_USE_CPU)."""
    import torch
    from accelerate.utils import parse_flag_from_env

    return not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")


def state() -> Any:
    """accelerate's `PartialState` of this job, joined to the launcher's process group (gloo on CPUs)."""
    from accelerate import PartialState

    shared = PartialState(cpu=on_cpu())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if shared.num_processes != launched:
        # Created elsewhere before t3s asked: each process would do (and write) everything.
        raise T3SError(
            f"process {os.environ.get('RANK', '?')} of a {launched}-process launch sees "
            f"{shared.num_processes} process(es) ({shared.distributed_type}); accelerate's state was "
            "created before t3s joined the group"
        )
    _warn_sharding_dropped(shared)
    return shared


_warned: set[str] = set()


def _warn_sharding_dropped(shared: Any) -> None:
    """accelerate 1.16 runs an FSDP or DeepSpeed launch on CPUs as plain DDP without a word: every
    process then holds the whole model, which a user sizing memory for sharding must know."""
    from accelerate.utils import parse_flag_from_env

    asked = [n for n in ("FSDP", "DEEPSPEED") if parse_flag_from_env(f"ACCELERATE_USE_{n}")]
    if not asked or not on_cpu() or not shared.is_main_process or asked[0] in _warned:
        return
    _warned.add(asked[0])
    from rich.console import Console

    Console(stderr=True).print(
        f"[yellow]warning:[/] {asked[0]} was requested (ACCELERATE_USE_{asked[0]}) but this job runs "
        "on CPUs, where accelerate trains with plain DDP: every process holds the whole model",
        highlight=False,
        soft_wrap=True,
    )
