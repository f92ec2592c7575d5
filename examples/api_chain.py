"""The whole T3S chain through the Python API, with the settings of examples/tiny-cpu.yaml.

From the repository root: `python examples/api_chain.py [MODEL]` (default: the config's model,
testbed:smollm2; any checkpoint directory works). Writes runs/api-chain; rerun it to resume.
"""

import sys

import t3s

cfg = t3s.load_config("examples/tiny-cpu.yaml")  # tokenize, recipe and probe settings
model = sys.argv[1] if len(sys.argv) > 1 else cfg.model
run = "runs/api-chain"
theta_b = t3s.probe(run, model, cfg.data, recipe=cfg.recipe, settings=cfg.probe, tokenize=cfg.tokenize)
t3s.profile(run)  # per-token Δc = c(θb) - c(θ0)
masks = t3s.select(run, "t3s")  # every response token but the Imitation Anchors (Δc > 0)
dataset = masks.to_dataset()  # input_ids, labels (-100: not trained), loss_mask: for any trainer
t3s.train(run, "t3s")  # θ0 retrained on the masks with the probe's recipe
t3s.rrt(run)  # θ0 + (θf - θb)
scoring = t3s.EvalSettings(samples=1, temperature=0, max_new_tokens=48, verifier=cfg.probe.eval.verifier)
rows = t3s.evaluate(run, cfg.data, scoring, policies=["base", "sft", "t3s", "rrt"])  # training accuracy
report = t3s.report(run)  # runs/api-chain/report/index.html and summary.md
print(theta_b["step"], masks.summary["kept_fraction"], {r["policy"]: r["avg@1"] for r in rows}, report.html)
