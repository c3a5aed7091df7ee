"""What ``ingest`` decides for each extracted fact, given the nearest existing memories: pure functions, no I/O.

``decide(candidate, neighbours)``, first rule that applies:
1. **NOOP**: a neighbour says the same: same subject, attribute and value, or the same content words (token-set
   Jaccard >= ``SAME``);
2. a neighbour states the same single-valued property (same subject and attribute, ``Fact.key``) with another value:
   - **UPDATE** when the new value refines the old one (every word of the old value is in the new: ``Paris`` ->
     ``Paris, in the 11th``): a new version of that memory;
   - **INVALIDATE** otherwise (``Paris`` -> ``Berlin``): the old memory is superseded (archived, with ``valid_until``
     and ``superseded_by`` in its metadata) and the new fact is added;
3. **UPDATE** when a neighbour's content words are all in the candidate's and they overlap enough (Jaccard >=
   ``REFINES``): the candidate says what it said and more;
4. **ADD** otherwise.
Neighbours are tried best first; each decision names the neighbour it is about and why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal["add", "update", "invalidate", "noop"]
SAME = 0.85
REFINES = 0.5

_WORD = re.compile(r"[a-z0-9']+")
_STOP_TEXT = """
a an the and or but of to in on at for with from by is are was were be been it its this that these those as so very
really just also then than there here i me my we our you your he she his her they them their said
yesterday today tonight tomorrow last next week weekend month year ago recently
"""
_STOP = frozenset(_STOP_TEXT.split())


def words(text: str) -> set[str]:
    """Content words of ``text``, lower case; a leading ``[date]`` stamp, resolved dates in parentheses and relative
    date words are not content (the same fact said on another day is the same fact)."""
    text = re.sub(r"\([^)]*\)", " ", re.sub(r"^\[[^\]]*\]\s*", "", text.lower()))
    return {w.strip("'") for w in _WORD.findall(text) if w.strip("'") and w.strip("'") not in _STOP}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass(frozen=True)
class Fact:
    """A candidate memory: text, the message refs it comes from, and its single-valued property if it states one."""

    text: str
    refs: tuple[str, ...] = ()
    speaker: str | None = None
    at: str | None = None
    subject: str | None = None
    attribute: str | None = None
    value: str | None = None

    @property
    def key(self) -> tuple[str, str] | None:
        if self.subject and self.attribute and self.value:
            return self.subject.strip().lower(), self.attribute.strip().lower()
        return None

    @classmethod
    def from_extracted(cls, data: dict[str, Any]) -> Fact:
        def opt(name: str) -> str | None:
            value = data.get(name)
            return str(value).strip() or None if value is not None else None

        return cls(text=" ".join(str(data["text"]).split()), refs=tuple(str(r) for r in data.get("refs", ())),
                   speaker=opt("speaker"), at=opt("at"), subject=opt("subject"), attribute=opt("attribute"),
                   value=opt("value"))

    def metadata(self) -> dict[str, str]:
        """The fact's fields that go into the memory's metadata (what later decisions compare)."""
        out = {name: getattr(self, name) for name in ("speaker", "at", "subject", "attribute", "value")}
        return {k: v for k, v in out.items() if v}


@dataclass(frozen=True)
class Known:
    """An existing memory as ``decide`` sees it."""

    memory_id: str
    version: int
    content: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str] | None:
        s, a, v = (self.metadata.get(x) for x in ("subject", "attribute", "value"))
        if isinstance(s, str) and isinstance(a, str) and isinstance(v, str) and s and a and v:
            return s.strip().lower(), a.strip().lower()
        return None


@dataclass(frozen=True)
class Decision:
    action: Action
    fact: Fact
    target: Known | None
    reason: str


def _value(value: Any) -> str:
    return " ".join(str(value).lower().split())


def decide(fact: Fact, neighbours: list[Known]) -> Decision:
    """The decision for ``fact`` (module docstring); ``neighbours`` best first."""
    mine = words(fact.text)
    for known in neighbours:
        if fact.key is not None and fact.key == known.key and _value(fact.value) == _value(known.metadata["value"]):
            return Decision("noop", fact, known, f"{known.memory_id} v{known.version} already says "
                            f"{fact.subject} / {fact.attribute}: {fact.value}")
        overlap = jaccard(mine, words(known.content))
        if overlap >= SAME:
            return Decision("noop", fact, known, f"{known.memory_id} v{known.version} says the same "
                            f"(word overlap {overlap:.2f})")
    for known in neighbours:
        if fact.key is not None and fact.key == known.key:
            old, new = _value(known.metadata["value"]), _value(fact.value)
            if words(old) and words(old) <= words(new):
                return Decision("update", fact, known, f"refines {fact.subject} / {fact.attribute}: {old!r} -> {new!r}")
            return Decision("invalidate", fact, known, f"contradicts {known.memory_id} v{known.version}: "
                            f"{fact.subject} / {fact.attribute} was {old!r}, now {new!r}")
    for known in neighbours:
        theirs = words(known.content)
        overlap = jaccard(mine, theirs)
        if theirs and theirs <= mine and overlap >= REFINES:
            return Decision("update", fact, known, f"adds to {known.memory_id} v{known.version} "
                            f"(all its words and {len(mine - theirs)} more)")
    return Decision("add", fact, None, "new: no existing memory says this" if neighbours else "new: nothing similar stored")
