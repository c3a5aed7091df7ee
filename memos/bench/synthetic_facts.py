"""Invented facts that no base model can know: people, towns, companies and numbers made up from a seeded RNG.

Used by ``memos bench parametric`` and the parametric tests. Names are built from syllables (``Vomarel Thrisk``,
``Ostwenmere``), so a model cannot guess them; every fact has its own subject, so no two facts conflict. The facts
are plain statements: the questions asked about them are derived from the text by distillation's own rules
(``memos.models.fact_questions``), exactly as for a real memory.
"""

from __future__ import annotations

import random

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "k", "kr", "l", "m", "n", "p", "qu", "r", "s", "sk", "t", "th",
           "tr", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou")
_CODAS = ("", "", "l", "n", "r", "s", "th", "x", "m")
_TOWN_SUFFIXES = ("mere", "holm", "wick", "ford", "stead", "haven", "by", "thorpe")
_COMPANY_SUFFIXES = ("Works", "Mills", "Foundry", "Press", "Traders")
_OBJECTS = ("brass key", "red notebook", "silver compass", "old radio", "green umbrella", "wooden flute",
            "glass jar", "leather map", "blue kettle", "iron lantern", "paper kite", "copper coin")
_JOBS = ("glassblower", "beekeeper", "cartographer", "clockmaker", "falconer", "luthier", "bookbinder",
         "stonemason", "perfumer", "cooper")
_TEMPLATES = 7


def synthetic_facts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` invented facts as ``(memory id, statement)``, the same for the same ``n`` and ``seed``.

    The first ``k`` facts of a run with ``n > k`` are the facts of a run with ``k``: sizes nest.
    """
    rng = random.Random(seed)
    used: set[str] = set()

    def fresh(make) -> str:
        while True:
            name = make()
            if name not in used:
                used.add(name)
                return name

    def word(syllables: int) -> str:
        return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))

    def person() -> str:
        return fresh(lambda: f"{word(2).capitalize()} {word(rng.choice((1, 2))).capitalize()}")

    def town() -> str:
        return fresh(lambda: (word(rng.choice((1, 2))) + rng.choice(_TOWN_SUFFIXES)).capitalize())

    facts = []
    for i in range(n):
        kind = i % _TEMPLATES
        if kind == 0:
            text = f"{person()} keeps the {rng.choice(_OBJECTS)} in {town()}."
        elif kind == 1:
            text = f"The population of {town()} is {rng.randrange(1_000, 99_000):,}."
        elif kind == 2:
            text = f"{person()}'s locker code is {rng.randrange(1000, 10_000)}."
        elif kind == 3:
            text = f"{person()} was born in {town()}."
        elif kind == 4:
            text = f"The mayor of {town()} is {person()}."
        elif kind == 5:
            company = fresh(lambda: f"{word(2).capitalize()} {rng.choice(_COMPANY_SUFFIXES)}")
            text = f"{person()} works as a {rng.choice(_JOBS)} at {company}."
        else:
            text = f"{person()} lives in {town()}."
        facts.append((f"m_{rng.getrandbits(64):016x}", text))
    return facts
