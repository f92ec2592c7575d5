"""Token-group dynamics (Figure 4) and persistent confidence drops (Table 2), from profile columns only."""

from __future__ import annotations

from typing import Any

import numpy as np

from t3s.analysis.artifacts import Profile
from t3s.errors import T3SError


def _trajectory(profile: Profile, bottleneck_step: int | None) -> dict[int, np.ndarray]:
    """Step -> per-token log-probs: θ0 at step 0, every scored probe step, and θb at its step."""
    columns = {step: profile.logprobs[name] for step, name in profile.steps.items()}
    if bottleneck_step is not None and bottleneck_step not in columns and "bottleneck" in profile.logprobs:
        columns[bottleneck_step] = profile.logprobs["bottleneck"]
    return dict(sorted({0: profile.logprobs["base"], **columns}.items()))


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def group_dynamics(
    profile: Profile, anchors: np.ndarray, bottleneck_step: int | None = None
) -> dict[str, Any]:
    """Mean Δprob = p(θ_k) - p(θ0) (probabilities, not log-probs) of anchors and of the rest, per step.

    `anchors` is a boolean mask over the profile's scored tokens (usually Δc > threshold at θb,
    possibly from another run's profile aligned token for token).
    """
    if not profile.steps:
        raise T3SError(
            "token-group dynamics need the profile at several checkpoints; "
            "run `t3s profile --run RUN --all-steps` (or --step K) first"
        )
    base = np.exp(profile.logprobs["base"].astype(np.float64))
    steps, anchor_means, other_means = [], [], []
    for step, logprob in _trajectory(profile, bottleneck_step).items():
        dprob = np.exp(logprob.astype(np.float64)) - base
        steps.append(step)
        anchor_means.append(_mean(dprob[anchors]))
        other_means.append(_mean(dprob[~anchors]))
    return {
        "steps": steps,
        "anchor_mean_dprob": anchor_means,
        "other_mean_dprob": other_means,
        "anchors": int(anchors.sum()),
        "others": int((~anchors).sum()),
        "anchor_share": float(anchors.mean()) if anchors.size else None,
    }


def persistent_drops(
    profile: Profile, final_step: int, anchors: np.ndarray, bottleneck_step: int | None = None
) -> dict[str, Any]:
    """Share of scored response tokens whose confidence is below θ0's at the final checkpoint.

    Also per scored step and within each group, to show whether drops persist or recover.
    """
    final = profile.column(f"step{final_step}", f"t3s profile --run RUN --step {final_step}")
    base = profile.logprobs["base"]
    below = final < base
    by_step = {
        step: float((logprob < base).mean())
        for step, logprob in _trajectory(profile, bottleneck_step).items()
    }
    return {
        "final_step": final_step,
        "tokens": int(below.size),
        "share_below_base": float(below.mean()),
        "anchor_share_below_base": _mean(below[anchors].astype(np.float64)),
        "other_share_below_base": _mean(below[~anchors].astype(np.float64)),
        "steps": list(by_step),
        "share_below_base_by_step": list(by_step.values()),
    }
