"""`t3s run`: the whole chain over one run directory, skipping finished stages, resuming the rest.

tokenize -> probe -> profile (+ cross-model profiles) -> select and train each policy -> RRT ->
eval (each benchmark of the config) -> analyze, then the report when the config asks for one.
`_chain` runs them through the API functions (`t3s.api`), as a user's script would;
`t3s.stage.execute` decides, from the fingerprints of each one's inputs, whether each is already done. The testbed runs this same chain and adds its own records after it.

With a dLLM student (`student:`) the probe and profile are the AR selector's (`model`), every
policy (plain SFT included) trains the student, there is no RRT, and the evaluations generate
the run's models with the student's diffusion sampler.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from t3s.config import EvalSection, RunConfig
from t3s.errors import T3SError
from t3s.rundir import RunDir
from t3s.selection import SelectOptions
from t3s.stage import announcing, execute, processes

console = Console(stderr=True)


def policy_options(cfg: RunConfig, run: RunDir) -> list[SelectOptions]:
    """The config's policies; a cross-model one reads its cross profile and is named after it."""
    crosses = {c.name for c in cfg.profile.cross_models}
    out = []
    for options in cfg.policies:
        if options.profile and options.profile.startswith("cross:"):
            cross_name = options.profile.removeprefix("cross:")
            if cross_name not in crosses:
                raise T3SError(f"policy {options.policy}: profile {options.profile!r} names no cross model")
            options = options.model_copy(
                update={
                    "profile": str(run.cross_profile(cross_name)),
                    "name": options.name or f"{options.policy}-cross-{cross_name}",
                }
            )
        out.append(options)
    names = [o.output_name() for o in out]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        # e.g. `entropy` at a fraction and at T3S's budget: the second would overwrite the first's masks.
        raise T3SError(f"two policies write RUN/masks/{twice[0]}; give one of them a name")
    return out


def trains(options: SelectOptions, dllm: bool = False) -> bool:
    """Whether a policy trains a model of its own. Plain SFT does not: the probe is plain SFT with
    this very recipe, so its final checkpoint is the SFT model (`RunDir.model("sft")`); a `dllm`
    student's SFT does, since the probe trained the AR selector."""
    if dllm:
        return True
    plain = options.policy == "sft" and options.selector == "bottleneck" and options.profile is None
    return not (plain and options.loss == "nll")


def profile_steps(cfg: RunConfig, policies: list[SelectOptions]) -> list[int]:
    """The probe checkpoints to profile: the config's, and θf's (the final step) when an excess-loss
    policy compares the run's θ0 with it, as it does by default."""
    from t3s.selection import FINAL

    final = cfg.recipe.steps
    wants_final = any(
        o.policy == "excess-loss" and o.reference in (None, FINAL) and o.profile is None for o in policies
    )
    return [*cfg.profile.steps, *([final] if wants_final and final not in cfg.profile.steps else [])]


def model_names(cfg: RunConfig, policies: list[SelectOptions]) -> list[str]:
    """The models the chain makes, by name: base (θ0), sft, each trained policy, rrt."""
    trained = [o.output_name() for o in policies if trains(o, cfg.student is not None)]
    return list(dict.fromkeys(["base", "sft", *trained, *(["rrt"] if cfg.rrt else [])]))


def _evaluate(run: RunDir, section: EvalSection, models: list[str]) -> None:
    """A benchmark's probe trajectory (when asked) and the run's models, as `t3s eval --run` scores them."""
    from t3s import api
    from t3s.evaluation import load_bench

    bench = load_bench(section.bench)
    if section.steps is not None:
        steps = None if section.steps == "all" else section.steps  # None: every checkpoint on disk
        api.evaluate(run.root, bench, section.settings, steps=steps)
    chosen = models if section.models == "all" else section.models
    if chosen:
        api.evaluate(run.root, bench, section.settings, policies=chosen)


def _chain(cfg: RunConfig, run: RunDir, policies: list[SelectOptions]) -> None:
    """The chain's stages in order, through the API functions: each reads what the ones before it
    left in the run directory."""
    from t3s import api
    from t3s.analysis.runner import AnalyzeStage

    remote = cfg.trust_remote_code
    api.probe(
        run.root, cfg.model, cfg.data,
        recipe=cfg.recipe, settings=cfg.probe, tokenize=cfg.tokenize, trust_remote_code=remote,
    )  # fmt: skip
    # θf joins the profile when an excess-loss policy compares θ0 with it, as it does by default.
    steps = profile_steps(cfg, policies)
    api.profile(run.root, cfg.profile.model_copy(update={"steps": steps}), trust_remote_code=remote)
    for options in policies:
        api.select(run.root, options)
        if trains(options, cfg.student is not None):
            name = options.output_name()
            api.train(
                run.root, name, recipe=cfg.recipe, save_every=cfg.save_every, trust_remote_code=remote,
                student=cfg.student,
            )  # fmt: skip
    if cfg.rrt:
        api.rrt(run.root)
    for section in cfg.eval:
        _evaluate(run, section, model_names(cfg, policies))
    if cfg.analyze is not None:
        execute(run, AnalyzeStage(cfg.analyze))


def run_pipeline(cfg: RunConfig) -> dict[str, Any]:
    """Run every stage of `cfg`, then write the report if asked; returns the models it made, by name."""
    from t3s.testbed import resolve_builtin

    cfg = cfg.model_copy(update={"model": resolve_builtin(cfg.model)})
    if (
        cfg.student is not None
    ):  # a student that cannot read the selector's tokens is refused before the first
        from t3s.dllm.student import check_student_tokenizer

        cfg = cfg.model_copy(update={"student": cfg.student.resolved()})
        check_student_tokenizer(cfg.model, cfg.student, trust_remote_code=cfg.trust_remote_code)
    if cfg.rrt:  # RRT is the last training stage: a run that cannot do it is refused before the first
        from t3s.rrt import check_rrt_inputs

        check_rrt_inputs(cfg.model, cfg.recipe, trust_remote_code=cfg.trust_remote_code)
    run = RunDir(cfg.run_dir)
    policies = policy_options(cfg, run)  # a policy naming no cross model is refused before the first stage
    made = model_names(cfg, policies)
    for section in cfg.eval:  # and so is an evaluation of a model the chain does not make
        unknown = [] if section.models == "all" else [m for m in section.models if m not in made]
        if unknown:
            raise T3SError(
                f"eval {section.bench}: this run makes no model {unknown} (it makes {', '.join(made)})"
            )
    main = processes().is_main_process
    if main:
        run.record("config", cfg.model_dump(mode="json"))
    with announcing(console.rule):  # one heading per stage, on the main process
        _chain(cfg, run, policies)
    models = {name: run.model(name) for name in made}
    if main:
        run.record("models", models)
        if cfg.report:
            from t3s import api

            api.report(run.root)
    return models
