"""The whole T3S chain through the Python API, with the settings of examples/tiny-cpu.yaml.

From the repository root: `python examples/api_chain.py [MODEL]` (default: the config's model,
testbed:smollm2; any checkpoint directory works). Writes runs/api-chain; rerun it to resume.
"""

import sys

import t3s

if __name__ == "__main__":  # answers are verified in worker processes, which import this file
    cfg = t3s.load_config("examples/tiny-cpu.yaml")  # tokenize, recipe and probe settings
    model = sys.argv[1] if len(sys.argv) > 1 else cfg.model
    run = "runs/api-chain"
    theta_b = t3s.probe(run, model, cfg.data, recipe=cfg.recipe, settings=cfg.probe, tokenize=cfg.tokenize)
    t3s.profile(run)  # per-token Δc = c(θb) - c(θ0)
    dataset = t3s.select(run, "t3s").to_dataset()  # input_ids, labels (-100: not trained), loss_mask
    t3s.train(run, "t3s")  # θ0 retrained on those masks with the probe's recipe
    t3s.rrt(run)  # θ0 + (θf - θb)
    scoring = t3s.EvalSettings(samples=1, temperature=0, max_new_tokens=48, batch_size=16,
                               verifier=cfg.probe.eval.verifier)  # greedy, as the probe measures
    rows = t3s.evaluate(run, cfg.data, scoring, policies=["base", "sft", "t3s", "rrt"])  # training accuracy
    print(theta_b["step"], len(dataset), {r["policy"]: r["avg@1"] for r in rows}, t3s.report(run).html)
