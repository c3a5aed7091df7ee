"""LoCoMo (Maharana et al., 2024) as plain data: conversations, sessions, turns and question/answer items.

A LoCoMo file is a JSON list of samples. Each sample has ``sample_id``, ``conversation`` (``speaker_a``,
``speaker_b``, ``session_N`` = list of turns ``{speaker, dia_id, text, [blip_caption]}`` and ``session_N_date_time``)
and ``qa`` (``{question, answer, evidence: [dia_id...], category}``). Categories follow LoCoMo's own code: 1
multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial.

Contract of ``load_locomo``:
- sessions are ordered by their number; a ``session_N_date_time`` without turns (the file has some) is ignored;
- evidence strings are normalised: joins such as ``"D8:6; D9:17"`` are split, spaces removed, ``"D:11:26"`` read as
  ``"D11:26"``; a piece that is no dia id, or names a turn the conversation does not have, is dropped;
- every question is kept (``Conversation.qa``); ``Conversation.asked()`` is the benchmark's question set: categories
  1-4 with at least one evidence turn left after normalisation. Category 5 has no answer in the conversation.

Raises ``ValueError`` naming the sample for a file that is not LoCoMo-shaped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CATEGORY_NAMES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
ASKED_CATEGORIES = (1, 2, 3, 4)

_SESSION_KEY = re.compile(r"session_(\d+)")
_DIA_ID = re.compile(r"D:?(\d+):(\d+)")


@dataclass(frozen=True, slots=True)
class Turn:
    """One utterance. ``image_caption`` is the BLIP caption of a shared image, when the turn shared one."""

    dia_id: str
    speaker: str
    text: str
    image_caption: str | None = None


@dataclass(frozen=True, slots=True)
class Session:
    """A dated sitting of the conversation. ``date_time`` is LoCoMo's string, e.g. ``"1:56 pm on 8 May, 2023"``."""

    number: int
    date_time: str
    turns: tuple[Turn, ...]


@dataclass(frozen=True, slots=True)
class QA:
    """A question with its gold answer (as text), the dia ids of the turns that support it, and its category."""

    question: str
    answer: str
    evidence: tuple[str, ...]
    category: int


@dataclass(frozen=True, slots=True)
class Conversation:
    sample_id: str
    speakers: tuple[str, str]
    sessions: tuple[Session, ...]
    qa: tuple[QA, ...]

    def turns(self) -> Iterator[tuple[Session, Turn]]:
        """Every turn in conversation order, with its session."""
        for session in self.sessions:
            for turn in session.turns:
                yield session, turn

    def asked(self) -> list[QA]:
        """The questions the benchmark asks: categories 1-4 that have evidence."""
        return [q for q in self.qa if q.category in ASKED_CATEGORIES and q.evidence]


def normalize_evidence(raw: Iterable[str], known: set[str] | None = None) -> tuple[str, ...]:
    """Canonical dia ids (``D<session>:<turn>``) from LoCoMo evidence strings, in order, without duplicates.

    Pieces that are not dia ids are dropped; with ``known``, so are ids not in it.
    """
    out: dict[str, None] = {}
    for item in raw:
        for piece in re.split(r"[;,]", str(item)):
            match = _DIA_ID.fullmatch(re.sub(r"\s+", "", piece))
            if match is None:
                continue
            dia_id = f"D{int(match[1])}:{int(match[2])}"
            if known is None or dia_id in known:
                out[dia_id] = None
    return tuple(out)


def _turn(raw: dict[str, Any]) -> Turn:
    caption = raw.get("blip_caption")
    return Turn(
        dia_id=str(raw["dia_id"]), speaker=str(raw["speaker"]), text=str(raw.get("text", "")),
        image_caption=str(caption) if caption else None,
    )


def _conversation(sample: dict[str, Any]) -> Conversation:
    sample_id = str(sample.get("sample_id", "?"))
    try:
        conv = sample["conversation"]
        numbers = sorted(int(m[1]) for key in conv if (m := _SESSION_KEY.fullmatch(key)))
        sessions = tuple(
            Session(n, str(conv.get(f"session_{n}_date_time", "")), tuple(_turn(t) for t in conv[f"session_{n}"]))
            for n in numbers
        )
        known = {t.dia_id for s in sessions for t in s.turns}
        qa = tuple(
            QA(
                question=str(q["question"]),
                answer="" if q.get("answer") is None else str(q["answer"]),
                evidence=normalize_evidence(q.get("evidence", ()), known),
                category=int(q["category"]),
            )
            for q in sample["qa"]
        )
        speakers = (str(conv["speaker_a"]), str(conv["speaker_b"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"LoCoMo sample {sample_id}: not LoCoMo-shaped ({exc!r})") from exc
    return Conversation(sample_id, speakers, sessions, qa)


def load_locomo(path: str | Path) -> list[Conversation]:
    """Read a LoCoMo JSON file. Raises OSError if unreadable, ValueError if not LoCoMo-shaped."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: a LoCoMo file is a JSON list of samples, got {type(data).__name__}")
    return [_conversation(sample) for sample in data]
