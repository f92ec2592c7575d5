"""Training-Trajectory-Aware Token Selection (T3S) for continual distillation of reasoning models.

The Python API (`t3s.api`) is exported here: `t3s.probe`, `t3s.profile`, `t3s.select`,
`t3s.train`, `t3s.rrt`, `t3s.evaluate`, `t3s.report`, ..., and the settings models. It is
imported on first use, so that `import t3s` (and the CLI) stays fast.

`t3s.probe`, `t3s.profile`, `t3s.train`, `t3s.rrt` and `t3s.report` are the API's functions even
though modules of those names exist: read the modules with `from t3s.probe import ...` (or
`importlib.import_module("t3s.probe")`); `import t3s.probe as m` and `from t3s import probe` give
the function.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The API (`t3s.api.__all__`): looked up in `t3s.api` on first use.
__all__ = [
    "AnalysisOptions",
    "AnalyzeSettings",
    "Bench",
    "CorpusCheck",
    "CrossModel",
    "DllmStudent",
    "EvalSection",
    "EvalSettings",
    "Example",
    "LoraSettings",
    "ProbeEval",
    "ProbeSettings",
    "Problem",
    "ProfileSettings",
    "RunConfig",
    "SelectOptions",
    "Selection",
    "T3SError",
    "TokenizeConfig",
    "TrainRecipe",
    "analyze",
    "evaluate",
    "evaluate_model",
    "load_config",
    "load_corpus",
    "probe",
    "profile",
    "profile_corpus",
    "report",
    "rrt",
    "rrt_checkpoints",
    "select",
    "train",
    "validate_corpus",
]
_API = frozenset(__all__)

if TYPE_CHECKING:
    from t3s.api import (
        AnalysisOptions,
        AnalyzeSettings,
        Bench,
        CorpusCheck,
        CrossModel,
        DllmStudent,
        EvalSection,
        EvalSettings,
        Example,
        LoraSettings,
        ProbeEval,
        ProbeSettings,
        Problem,
        ProfileSettings,
        RunConfig,
        Selection,
        SelectOptions,
        T3SError,
        TokenizeConfig,
        TrainRecipe,
        analyze,
        evaluate,
        evaluate_model,
        load_config,
        load_corpus,
        probe,
        profile,
        profile_corpus,
        report,
        rrt,
        rrt_checkpoints,
        select,
        train,
        validate_corpus,
    )


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 't3s' has no attribute {name!r}")
    from t3s import api

    value = getattr(api, name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Python sets each submodule on its package once it is imported; the module t3s.probe must
        # not then replace the function t3s.probe.
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
