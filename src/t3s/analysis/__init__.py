"""The paper's analyses over a run directory (METHOD.md section 7); `runner.analyze` is the entry point.

Modules: `artifacts` (reading a run), `shock`, `groups` (group dynamics, persistent drops),
`tokens`, `tokenloss` (group losses and gradients), `gradients` (gradient dynamics, one-step
intervention), `transfer`, `separability`, `plots`; `options` (what a run config or `t3s analyze` asks for);
`runner` writes `RUN/analysis/<name>.*` (and its `AnalyzeStage` ends `t3s run`'s chain).
"""
