"""`python dllm_train_job.py DLLM CORPUS OUT OBJECTIVE`: train the A2D student DLLM on CORPUS with a
target set B, in this process or under torchrun in several; rank 0's Trainer saves the final
checkpoint to OUT/checkpoint-STEPS (tests/test_dllm_distributed.py compares them)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from t3s import distributed
from t3s.data import load_corpus
from t3s.dllm.a2d import load_dllm
from t3s.dllm.training import DiffusionSettings, build_diffusion_trainer, diffusion_dataset
from t3s.models import load_tokenizer
from t3s.tokens import TokenizeConfig, tokenize_corpus
from t3s.training import TrainRecipe

# 3 steps of 4 examples: one epoch of the 12-example corpus. SGD: Adam would scale the float
# rounding of a near-zero gradient (DDP sums in another order) up to ~lr.
RECIPE = TrainRecipe(
    steps=3, batch_size=4, micro_batch_size=2, lr=1e-2, seed=3, optim="sgd", mixed_precision="no"
)

if __name__ == "__main__":
    dllm, corpus, out, objective = [a for a in sys.argv[1:] if a != "--"]  # launch's `--`
    distributed.state()  # join torchrun's group before Trainer creates accelerate's state
    tokenizer = load_tokenizer(dllm)
    items = tokenize_corpus(tokenizer, load_corpus(Path(corpus)), TokenizeConfig())[0]
    # B: every third response token, so union masking (targets always masked) is in the loss.
    targets = [
        np.isin(np.arange(len(t.input_ids)), np.arange(t.response_start, t.response_end, 3)).astype(np.int8)
        for t in items
    ]
    settings = DiffusionSettings(objective=objective, block_size=4)
    model = load_dllm(dllm, device=torch.device("cpu")).train()
    trainer = build_diffusion_trainer(
        model, tokenizer, diffusion_dataset(items, targets), RECIPE, settings, Path(out)
    )
    trainer.train()
