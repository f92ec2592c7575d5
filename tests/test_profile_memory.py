"""The profile's working memory: one [chunk x vocab] float32 logits block at a time, never [T x vocab]."""

import weakref
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from t3s.confidence import gather_logprobs, score_batch
from t3s.models import load_model
from t3s.tokens import TokenizedExample

CPU = torch.device("cpu")


class LargeTensors(TorchDispatchMode):
    """Counts the tensors of at least `numel` elements alive at once, and the largest one made."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.live, self.most, self.largest = numel, {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
                if t.numel() >= self.numel:  # keyed by storage: in-place results are the same block
                    self.live[t.untyped_storage().data_ptr()] = weakref.ref(t)
        self.live = {k: r for k, r in self.live.items() if r() is not None}
        self.most = max(self.most, len(self.live))
        return out


def test_scoring_holds_one_logits_block_at_a_time(tiny_model: Path) -> None:
    model = load_model(str(tiny_model), device=CPU, dtype=torch.float32)
    vocab, chunk = model.config.vocab_size, 128  # chunk x vocab > the weight's vocab x hidden (64)
    ids = np.random.default_rng(0).integers(0, vocab, 3 * chunk + 20).tolist()
    item = TokenizedExample("long", ids, response_start=10, response_end=len(ids))
    with LargeTensors(chunk * vocab) as seen:
        got = score_batch(model, [item], chunk=chunk)[0]
    assert seen.largest == chunk * vocab  # never [T x vocab]: T = 404 positions were scored
    assert seen.most == 1  # the log-softmax reuses the logits block instead of allocating a second
    with torch.no_grad():
        ref = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
    want = ref[torch.arange(9, len(ids) - 1), torch.tensor(ids[10:])].numpy()
    np.testing.assert_allclose(got[10:], want, rtol=0, atol=2e-5)
    assert np.isnan(got[:10]).all()


def test_log_probs_keep_their_gradient(tiny_model: Path) -> None:
    model = load_model(str(tiny_model), device=CPU, dtype=torch.float32)
    hidden = torch.randn(40, 64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    targets = torch.arange(40) * 997
    gather_logprobs(model, hidden, targets, chunk=16).sum().backward()
    w = model.get_output_embeddings().weight.detach()
    h = hidden.detach().requires_grad_(True)
    torch.log_softmax(h @ w.T, -1).gather(-1, targets[:, None]).sum().backward()
    torch.testing.assert_close(hidden.grad, h.grad)


def test_scoring_with_entropy_holds_two_blocks_at_most(tiny_model: Path) -> None:
    model = load_model(str(tiny_model), device=CPU, dtype=torch.float32)
    vocab, chunk = model.config.vocab_size, 128
    ids = np.random.default_rng(1).integers(0, vocab, 3 * chunk + 20).tolist()
    item = TokenizedExample("long", ids, response_start=10, response_end=len(ids))
    with LargeTensors(chunk * vocab) as seen:
        got = score_batch(model, [item], chunk=chunk, entropy=True)[0]
    assert seen.largest == chunk * vocab
    assert seen.most == 2  # the log-softmax in the logits block, and p
    np.testing.assert_allclose(got[0], score_batch(model, [item], chunk=chunk)[0], rtol=0, atol=1e-6)
