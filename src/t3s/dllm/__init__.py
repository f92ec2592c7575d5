"""Masked-diffusion students (dLLMs): noise, attention masks, loss, training, sampling, A2D conversion.

A dLLM student is trained and evaluated inside the same stages as an AR one; only the objective
(`t3s.dllm.training`), the generation engine (`t3s.dllm.sampler`) and, for T3S, the selection (a
target set B of yet-to-learn tokens instead of a keep mask, `t3s.dllm.targets`) differ.
"""
