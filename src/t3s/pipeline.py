"""`t3s run`: the whole AR chain over one run directory, skipping finished stages, resuming the rest.

tokenize -> probe -> profile (+ cross-model profiles) -> select and train each policy -> RRT.
`stages` lists them; `t3s.stage.execute` decides, from the fingerprints of each one's inputs,
whether it is already done.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rich.console import Console

from t3s.config import RunConfig
from t3s.errors import T3SError
from t3s.rundir import RunDir
from t3s.stage import Stage, execute, processes

console = Console(stderr=True)


def stages(cfg: RunConfig, run: RunDir, tokenizer: Any) -> Iterator[Stage]:
    """The chain's stages in order. Each is built once the ones before it have run (a generator),
    from what they left in the run directory."""
    from t3s.probe import ProbeStage
    from t3s.profile import CrossProfileStage, ProfileStage
    from t3s.rrt import RRTStage
    from t3s.selection import SelectStage
    from t3s.tokenize_stage import TokenizeStage
    from t3s.tokens import tokens_fingerprint
    from t3s.train import TrainStage

    remote = cfg.trust_remote_code
    tok_cfg = cfg.tokenize
    tokenize = TokenizeStage(cfg.data, tokenizer, tok_cfg)
    yield tokenize
    items = run.read_tokens()
    yield ProbeStage(
        cfg.model, tokenize.examples, items, tokenizer, tok_cfg, cfg.recipe, cfg.probe,
        tokens_fp=tokens_fingerprint(items), trust_remote_code=remote,
    )  # fmt: skip
    p = cfg.profile
    scoring = {"device": p.device, "dtype": p.dtype, "max_batch_tokens": p.batch_tokens, "chunk": p.chunk}
    yield ProfileStage(steps=p.steps, all_steps=p.all_steps, trust_remote_code=remote, **scoring)
    for cross in p.cross_models:
        models = {"base": cross.base, "bottleneck": cross.bottleneck}
        yield CrossProfileStage(cross.name, models, tok_cfg, trust_remote_code=remote, **scoring)
    for options in cfg.policies:
        if options.profile and options.profile.startswith("cross:"):
            cross_name = options.profile.removeprefix("cross:")
            if cross_name not in {c.name for c in p.cross_models}:
                raise T3SError(f"policy {options.policy}: profile {options.profile!r} names no cross model")
            options = options.model_copy(
                update={
                    "profile": str(run.cross_profile(cross_name)),
                    "name": options.name or f"{options.policy}-cross-{cross_name}",
                }
            )
        yield SelectStage(options)
        if options.policy == "sft" and options.selector == "bottleneck" and options.profile is None:
            continue  # the probe is plain SFT with this very recipe: its final checkpoint is the SFT model
        yield TrainStage(
            options.output_name(), recipe=cfg.recipe, save_every=cfg.save_every, trust_remote_code=remote
        )
    if cfg.rrt:
        yield RRTStage()


def run_pipeline(cfg: RunConfig) -> dict[str, Any]:
    """Run every stage of `cfg`; returns the models it produced, by name."""
    from t3s.models import load_tokenizer
    from t3s.rrt import RRTStage
    from t3s.train import TrainStage

    if cfg.rrt:  # RRT is the last stage: a run that cannot do it is refused before the first
        from t3s.rrt import check_rrt_inputs

        check_rrt_inputs(cfg.model, cfg.recipe, trust_remote_code=cfg.trust_remote_code)
    run = RunDir(cfg.run_dir)
    main = processes().is_main_process
    if main:
        run.record("config", cfg.model_dump(mode="json"))
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    trained: dict[str, str] = {}
    for stage in stages(cfg, run, tokenizer):
        console.rule(stage.name)
        execute(run, stage)
        if isinstance(stage, TrainStage | RRTStage):
            trained[stage.policy] = str(run.model_dir(stage.policy))
    models = {"base": run.base_model(), "sft": run.resolve(run.bottleneck()["final"]), **trained}
    if main:
        run.record("models", models)
    return models
