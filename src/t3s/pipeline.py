"""`t3s run`: the whole AR chain over one run directory, skipping finished stages, resuming the rest.

tokenize -> probe -> profile (+ cross-model profiles) -> select and train each policy -> RRT.
Each stage decides on its own, from the fingerprints of its inputs, whether it is already done.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from t3s.config import RunConfig
from t3s.errors import T3SError
from t3s.fingerprint import digest, model_fingerprint
from t3s.rundir import RunDir

console = Console(stderr=True)


def run_rrt(run: RunDir, probe: dict[str, Any]) -> str:
    from accelerate import PartialState

    from t3s.rrt import rrt

    paths = [run.resolve(probe[k]) for k in ("base", "bottleneck", "final")]
    out = run.train_dir("rrt") / "model"
    fp = digest([model_fingerprint(p) for p in paths])
    if PartialState().is_main_process and not (run.stage_done("rrt", fp) and out.exists()):
        with run.running("rrt", fp) as extras:
            extras["summary"] = rrt(*paths, out)
    PartialState().wait_for_everyone()
    return str(out)


def run_pipeline(cfg: RunConfig) -> dict[str, Any]:
    """Run every stage of `cfg`; returns the models it produced, by name."""
    from t3s.models import load_tokenizer
    from t3s.probe import run_probe
    from t3s.profile import profile_run, profile_standalone
    from t3s.selection import select_run
    from t3s.tokenize import prepare_corpus
    from t3s.tokens import tokens_fingerprint
    from t3s.train import train_policy

    if cfg.rrt:  # RRT is the last stage: a run that cannot do it is refused before the first
        from t3s.rrt import check_rrt_inputs

        check_rrt_inputs(cfg.model, cfg.recipe, trust_remote_code=cfg.trust_remote_code)
    run = RunDir(cfg.run_dir)
    run.record("config", cfg.model_dump(mode="json"))
    remote = cfg.trust_remote_code
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=remote)
    tok_cfg = cfg.tokenize.config()
    console.rule("tokenize")
    examples, items = prepare_corpus(run, cfg.data, tokenizer, tok_cfg)
    console.rule("probe")
    probe = run_probe(
        run, cfg.model, examples, items, tokenizer, tok_cfg, cfg.recipe, cfg.probe,
        tokens_fp=tokens_fingerprint(items), trust_remote_code=remote,
    )  # fmt: skip
    console.rule("profile")
    p = cfg.profile
    scoring = {"device": p.device, "dtype": p.dtype, "max_batch_tokens": p.batch_tokens, "chunk": p.chunk}
    profile_run(run.root, steps=p.steps, all_steps=p.all_steps, trust_remote_code=remote, **scoring)
    cross_profiles = {}
    for cross in p.cross_models:
        out = run.profile_dir / f"cross-{cross.name}.parquet"
        profile_standalone(
            {"base": cross.base, "bottleneck": cross.bottleneck}, run.corpus, out, tok_cfg,
            trust_remote_code=remote, **scoring,
        )  # fmt: skip
        cross_profiles[cross.name] = str(out)
    models = {"base": run.resolve(probe["base"]), "sft": run.resolve(probe["final"])}
    for options in cfg.policies:
        if options.profile and options.profile.startswith("cross:"):
            cross_name = options.profile.removeprefix("cross:")
            if cross_name not in cross_profiles:
                raise T3SError(f"policy {options.policy}: profile {options.profile!r} names no cross model")
            options = options.model_copy(
                update={
                    "profile": cross_profiles[cross_name],
                    "name": options.name or f"{options.policy}-cross-{cross_name}",
                }
            )
        name = options.output_name()
        console.rule(f"policy {name}")
        select_run(run.root, options)
        if options.policy == "sft" and options.selector == "bottleneck" and options.profile is None:
            continue  # the probe is plain SFT with this very recipe: its final checkpoint is the SFT model
        train_policy(run.root, name, base=models["base"], recipe=cfg.recipe, save_every=cfg.save_every,
                     trust_remote_code=remote)  # fmt: skip
        models[name] = str(run.train_dir(name) / "model")
    if cfg.rrt:
        console.rule("rrt")
        models["rrt"] = run_rrt(run, probe)
    run.record("models", models)
    return models
