"""Verifiers for the teacher tests, in a module with no heavy imports: the verifier pool's fresh
worker processes import it, and importing a test module (torch, t3s) would cost them seconds."""


def gold_any(gold: str, completion: str) -> bool:
    """Accepts every answer to the gold answer "ANY" and none to anything else."""
    return gold == "ANY"


def bare_gold(gold: str, completion: str) -> bool:
    """Accepts a completion that ends with the bare gold answer."""
    return completion.endswith(gold)


def boxed_gold(gold: str, completion: str) -> bool:
    """Accepts a completion whose last \\boxed{} holds exactly the gold answer (math-verify, minus its import)."""
    return completion.rpartition("\\boxed{")[2].partition("}")[0] == gold
