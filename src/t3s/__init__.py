"""Training-Trajectory-Aware Token Selection (T3S) for continual distillation of reasoning models."""

__version__ = "0.1.0"
