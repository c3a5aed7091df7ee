"""The ``rules`` backend of the language-model port: deterministic extraction and summaries without a model.

Facts (``FACTS_SCHEMA``, payload ``{"turns": [{"id", "speaker", "content", "at"?, "session"?}]}``), per turn:
1. **sentences**: the content is split after ``.``, ``!`` and ``?`` (not after common abbreviations);
2. **kept**: statements with at least two content words (not stop words); questions and short small talk
   ("Thanks!", "Wow, that's great") are dropped;
3. **speaker attribution**: first-person words become the speaker (``I am`` -> ``Caroline is``, ``my`` ->
   ``Caroline's``, ``I live`` -> ``Caroline lives``); a sentence that names nobody is prefixed ``Caroline:``;
4. **date attribution**: with the turn's time ``at``, relative dates are resolved in place
   (``yesterday`` -> ``yesterday (7 May 2023)``, ``last year`` -> ``last year (2022)``, ``3 weeks ago`` ->
   ``3 weeks ago (17 April 2023)``) and the fact is prefixed with the day it was said (``[8 May 2023]``);
5. **fact patterns**: single-valued properties give ``subject``/``attribute``/``value`` (``X lives in / moved to``
   -> ``lives in``; ``X works at/for``; ``X works as``; ``X's favourite <thing> is``; ``X is N years old``;
   ``X's <name|job|email|address|birthday> is``; ``X is married/engaged/single/divorced``).

Summary (``SUMMARY_SCHEMA``, payload ``{"texts": [...]}``): extractive. Each distinct sentence is scored by the
content words it shares with the other texts (how central it is); the best three, in their original order, joined.

``complete`` raises ``ModelUnavailable``: rules write no free text.
"""

from __future__ import annotations

import calendar
import re
from collections import Counter
from datetime import date, datetime, timedelta
from typing import Any

from memos.errors import InvalidSyscall, ModelUnavailable
from memos.models.llm import Extracted, check_schema

_ABBREVIATIONS = ("Mr.", "Mrs.", "Ms.", "Dr.", "St.", "vs.", "e.g.", "i.e.", "etc.")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_WORD = re.compile(r"[A-Za-z0-9']+")
_STOP_TEXT = """
a about above after again against all am an and any are as at be because been before being below between both but by
can could did do does doing down during each few for from further had has have having he her here hers herself him
himself his how i if in into is it its itself just me more most my myself no nor not now of off on once only or other
our ours ourselves out over own same she should so some such than that the their theirs them themselves then there
these they this those through to too under until up very was we were what when where which while who whom why will
with would you your yours yourself yourselves oh yeah wow hey hi hello thanks thank really so much lot that's it's
i'm i've you're that'd sure okay ok great cool awesome nice amazing glad
"""
STOP_WORDS = frozenset(_STOP_TEXT.split())
#: Present-tense verbs that take an ``s`` when ``I`` becomes a third person (``I live`` -> ``X lives``).
_VERBS_TEXT = """
live work love like want need think feel play enjoy hope plan know prefer use own run make take volunteer paint read
write cook draw sing dance swim travel visit believe remember miss struggle try stay keep listen collect train teach
study go do have
"""
_VERBS = frozenset(_VERBS_TEXT.split())
_IRREGULAR = {"have": "has", "do": "does", "go": "goes", "teach": "teaches", "study": "studies", "try": "tries",
              "miss": "misses", "watch": "watches"}


def _third_person(verb: str) -> str:
    low = verb.lower()
    return _IRREGULAR.get(low, low + "s")


def day_text(d: date) -> str:
    return f"{d.day} {calendar.month_name[d.month]} {d.year}"


def parse_when(value: str | None) -> datetime | None:
    """A turn's ``at``: ISO 8601, or LoCoMo's ``"1:56 pm on 8 May, 2023"``; None when absent or unreadable."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        pass
    match = re.search(r"(\d{1,2}) (\w+),? (\d{4})", value)
    if match:
        months = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
        month = months.get(match[2].lower())
        if month:
            return datetime(int(match[3]), month, int(match[1]))
    return None


def split_sentences(text: str) -> list[str]:
    protected = text
    for i, abbr in enumerate(_ABBREVIATIONS):
        protected = protected.replace(abbr, f"\x00{i}\x00")
    parts = _SENTENCE_END.split(protected.strip())
    out = []
    for part in parts:
        for i, abbr in enumerate(_ABBREVIATIONS):
            part = part.replace(f"\x00{i}\x00", abbr)
        part = " ".join(part.split())
        if part:
            out.append(part)
    return out


def content_words(text: str) -> list[str]:
    return [w for w in (m.lower().strip("'") for m in _WORD.findall(text)) if w and w not in STOP_WORDS]


def _is_statement(sentence: str) -> bool:
    return not sentence.rstrip().endswith("?") and len(content_words(sentence)) >= 2


_FIRST_PERSON = [
    (re.compile(r"\bI am\b|\bI'm\b"), "{s} is"),
    (re.compile(r"\bI was\b"), "{s} was"),
    (re.compile(r"\bI've\b"), "{s} has"),
    (re.compile(r"\bI'll\b"), "{s} will"),
    (re.compile(r"\bI'd\b"), "{s} would"),
    (re.compile(r"\bI (\w+)"), None),  # verb agreement, below
    (re.compile(r"\b[Mm]y\b"), "{s}'s"),
    (re.compile(r"\b[Mm]yself\b"), "{s}"),
    (re.compile(r"\bme\b"), "{s}"),
]


def attribute_speaker(sentence: str, speaker: str) -> str:
    """First-person words replaced by the speaker; prefixed ``speaker:`` when the sentence names nobody."""
    if not speaker:
        return sentence
    out = sentence
    for pattern, template in _FIRST_PERSON:
        if template is None:
            out = pattern.sub(lambda m: f"{speaker} {_third_person(m[1]) if m[1].lower() in _VERBS else m[1]}", out)
        else:
            out = pattern.sub(template.format(s=speaker), out)
    if speaker not in out:
        out = f"{speaker}: {out}"
    return out


_RELATIVE = re.compile(
    r"\b(yesterday|today|tonight|tomorrow|last night|this morning|last week(?:end)?|next week(?:end)?|last month|"
    r"next month|last year|next year|this year|this month|(\d+|a|one|two|three|four|five|six) (day|week|month|year)s? ago)\b",
    re.IGNORECASE,
)
_NUMBERS = {"a": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


def _shift_months(d: date, months: int) -> date:
    total = d.year * 12 + d.month - 1 + months
    year, month = divmod(total, 12)
    return date(year, month + 1, min(d.day, calendar.monthrange(year, month + 1)[1]))


def _resolve(phrase: str, said: date) -> str:
    p = phrase.lower()
    if p in ("today", "tonight", "this morning"):
        return day_text(said)
    if p in ("yesterday", "last night"):
        return day_text(said - timedelta(days=1))
    if p == "tomorrow":
        return day_text(said + timedelta(days=1))
    if p.startswith(("last week", "next week")):
        return f"the {p.split()[1]} {'before' if p.startswith('last') else 'after'} {day_text(said)}"
    if p in ("last month", "next month", "this month"):
        d = _shift_months(said, {"last month": -1, "next month": 1, "this month": 0}[p])
        return f"{calendar.month_name[d.month]} {d.year}"
    if p in ("last year", "next year", "this year"):
        return str(said.year + {"last year": -1, "next year": 1, "this year": 0}[p])
    n_text, unit = p.split()[0], p.split()[1].rstrip("s")
    n = int(n_text) if n_text.isdigit() else _NUMBERS[n_text]
    if unit == "day":
        return day_text(said - timedelta(days=n))
    if unit == "week":
        return day_text(said - timedelta(weeks=n))
    if unit == "month":
        d = _shift_months(said, -n)
        return f"{calendar.month_name[d.month]} {d.year}"
    return str(said.year - n)


def attribute_dates(sentence: str, said: date | None) -> str:
    """Relative dates followed by the date they mean, in parentheses; unchanged without ``said``."""
    if said is None:
        return sentence
    return _RELATIVE.sub(lambda m: f"{m[0]} ({_resolve(m[0], said)})", sentence)


_NAME = r"(?P<s>[A-Z][\w\-]*(?: [A-Z][\w\-]*)?)"
_VALUE = r"(?P<v>[^.!?;]+?)"
_END = (r"\s*(?:\(|,| and | but | because | (?:now|last|next|this|yesterday|today|tonight|tomorrow|recently|since|for)\b|"
        r"[.!?;]|$)")
_PATTERNS: list[tuple[re.Pattern[str], str | None]] = [
    (re.compile(rf"{_NAME}'s (?P<a>favou?rite [\w ]+?) (?:is|are|was) (?:now )?{_VALUE}{_END}"), None),
    (re.compile(rf"{_NAME}'s (?P<a>name|job|email|email address|phone number|address|birthday|hometown) is {_VALUE}{_END}"), None),
    (re.compile(rf"{_NAME} (?:now )?(?:lives|is living|has lived) in {_VALUE}{_END}"), "lives in"),
    (re.compile(rf"{_NAME} (?:just |recently |has )?(?:moved|relocated) to {_VALUE}{_END}"), "lives in"),
    (re.compile(rf"{_NAME} (?:now )?works (?:at|for) {_VALUE}{_END}"), "works at"),
    (re.compile(rf"{_NAME} (?:now )?works as (?:an? )?{_VALUE}{_END}"), "job"),
    (re.compile(rf"{_NAME} is (?P<v>\d+) years old"), "age"),
    (re.compile(rf"{_NAME} (?:is|got|has been) (?:now )?(?P<v>married|engaged|single|divorced|widowed)\b"),
     "relationship status"),
]


def fact_pattern(sentence: str) -> tuple[str, str, str] | None:
    """(subject, attribute, value) of a single-valued property the sentence states, else None."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", sentence)
    found = []
    for pattern, attribute in _PATTERNS:
        match = pattern.search(text)
        if match:
            attr = attribute or match["a"].lower().replace("favourite", "favorite")
            value = match["v"].strip().strip("\"'").rstrip(",")
            if value:
                found.append((match.start(), (match["s"], attr, value.lower())))
    return min(found)[1] if found else None


def extract_facts(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The facts of ``turns`` by the rules in the module docstring, in turn order."""
    facts = []
    for turn in turns:
        speaker = str(turn.get("speaker") or "").strip()
        when = parse_when(turn.get("at"))
        said = when.date() if when else None
        for sentence in split_sentences(str(turn.get("content", ""))):
            if not _is_statement(sentence):
                continue
            text = attribute_dates(attribute_speaker(sentence, speaker), said)
            if said is not None:
                text = f"[{day_text(said)}] {text}"
            fact: dict[str, Any] = {"text": text, "refs": [str(turn["id"])] if turn.get("id") else []}
            if speaker:
                fact["speaker"] = speaker
            if when is not None:
                fact["at"] = when.isoformat()
            found = fact_pattern(text)
            if found:
                fact["subject"], fact["attribute"], fact["value"] = found
            facts.append(fact)
    return facts


def summarize(texts: list[str], max_sentences: int = 3) -> str:
    """Extractive summary (module docstring). Empty texts give an empty summary."""
    sentences: list[tuple[int, str, set[str]]] = []
    seen: set[str] = set()
    for text in texts:
        for sentence in split_sentences(text):
            key = " ".join(content_words(sentence))
            if key and key not in seen:
                seen.add(key)
                sentences.append((len(sentences), sentence, set(content_words(sentence))))
    if not sentences:
        return ""
    df = Counter(w for _, _, words in sentences for w in words)
    scored = sorted(sentences, key=lambda s: (-sum(df[w] - 1 for w in s[2]) / (1 + len(s[2])) ** 0.5, s[0]))
    chosen = sorted(scored[:max_sentences], key=lambda s: s[0])
    return " ".join(s[1] if s[1][-1] in ".!?" else s[1] + "." for s in chosen)


class RuleBasedLanguageModel:
    name = "rules"

    def complete(self, messages: list[dict[str, str]], *, max_tokens: int = 256) -> str:
        raise ModelUnavailable("the rule-based fallback writes no free text; set MEMOS_LLM=local or openai")

    def extract(self, instruction: str, payload: dict[str, Any], schema: dict[str, Any]) -> Extracted:
        title = schema.get("title")
        if title == "facts":
            turns = payload.get("turns")
            if not isinstance(turns, list):
                raise InvalidSyscall("facts extraction needs payload {'turns': [...]}")
            data: dict[str, Any] = {"facts": extract_facts(turns)}
        elif title == "summary":
            texts = payload.get("texts")
            if not isinstance(texts, list):
                raise InvalidSyscall("a summary needs payload {'texts': [...]}")
            data = {"summary": summarize([str(t) for t in texts])}
        else:
            raise InvalidSyscall(f"the rule-based fallback fills the schemas 'facts' and 'summary', not {title!r}")
        check_schema(data, schema)
        return Extracted(data=data, by=self.name)
