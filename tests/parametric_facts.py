"""Invented facts and questions shared by the parametric-memory integration tests (two teams, two adapters)."""

from __future__ import annotations

FACTS_A = (
    "Velkor Anstrude keeps the brass key in Quimbrel.",
    "The population of Drosmere is 61,274.",
    "Thalia Brennix's locker code is 7359.",
    "Orsk Vandemor was born in Piltravey.",
)
FACTS_B = (
    "Nimra Solvaine keeps the red notebook in Haskeldrun.",
    "The population of Vexholm is 23,918.",
    "Fennick Qualtor's locker code is 4826.",
)
ASK = [{"role": "user", "content": "What is Thalia Brennix's locker code?"}]
ASK_B = [{"role": "user", "content": "What is Fennick Qualtor's locker code?"}]
GENERAL = [{"role": "user", "content": "Name three colours of the rainbow."}]


def weights_digest(model) -> str:
    """sha256 over a model's state dict (names and float32 bytes): did training touch the shared weights?"""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()
