"""Questions a fact answers, derived from its statement without a language model.

Distillation (``memos.models.distill``) trains on, and evaluates with, question/answer pairs about each fact. A memory
is free text, so the pairs are derived by rules over its sentences, most specific first:

===========================================  ==========================================  ======================
statement                                    questions (first trained, then held out)     answer key
===========================================  ==========================================  ======================
``The A of B is C.``                         What is the A of B? / What is B's A?         C
``B's A is C.``                              What is B's A? / What is the A of B?         C
``S keeps O in P.`` (in, at, on, under...)   Where does S keep O? / In what place ...     P
``S lives in P.`` (lives, works, was born,   Where does S live? / In which place ...      P
moved, grew up, studies; in, at, to, as)
anything else                                a cloze: the sentence with its last span     the last span
                                             blanked (after its last preposition, verb
                                             "is/was/are" or before a number, at most 5
                                             words; else the last word)
===========================================  ==========================================  ======================

Every sentence of three words or more also yields a cloze, so nearly any memory gives a question. Each question carries its answer
*key* (the span that must appear in a reply). Only the first question of a sentence is trained (the rule's first
phrasing, or the cloze when no rule matched); the others (the rule's second phrasing and the cloze) are held out, so
that evaluation can tell a learnt fact from a learnt string, and training stays cheap.

:func:`answer_matches` is the one recall criterion: the normalised key is a substring of the normalised reply
(lower case, articles and punctuation dropped, digit group separators removed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])|\n+")
_ARTICLE = re.compile(r"^(the|a|an)\s+", re.IGNORECASE)
_OF = re.compile(r"^The (?P<attr>[\w' -]+?) of (?P<entity>.+?) (?:is|was) (?P<value>.+)$")
_POSSESSIVE = re.compile(r"^(?P<entity>[A-Z][\w.-]*(?: [A-Z][\w.-]*)*)'s (?P<attr>[\w' -]+?) (?:is|was) (?P<value>.+)$")
_KEEPS = re.compile(
    r"^(?P<subject>.+?) (?P<verb>keeps|stores|hides|keep|store|hide) (?P<object>.+?) "
    r"(?P<prep>in|at|on|under|inside|behind|beside|near) (?P<place>.+)$"
)
# Verbs of place, as (question auxiliary, base form) by the inflected form that appears in a statement.
_PLACE_VERBS = {
    "lives": ("does", "live"), "lived": ("did", "live"), "works": ("does", "work"), "worked": ("did", "work"),
    "studies": ("does", "study"), "studied": ("did", "study"), "moved": ("did", "move"),
    "grew up": ("did", "grow up"), "was born": ("was", "born"), "is based": ("is", "based"),
    "teaches": ("does", "teach"), "taught": ("did", "teach"),
}
_PLACE = re.compile(
    r"^(?P<subject>[A-Z][\w.'-]*(?: [A-Z][\w.'-]*)*) (?P<verb>" + "|".join(map(re.escape, _PLACE_VERBS)) + r") "
    r"(?P<prep>in|at|to|as|for) (?P<place>.+)$"
)
# Where a cloze cuts a sentence: before its last preposition, copula or number (the tail is the answer).
_CLOZE_CUT = re.compile(r"\b(?:in|at|on|to|by|for|from|with|of|is|was|are|were|has|have)\s+|\s(?=\d)")
_MAX_CLOZE_WORDS = 5


@dataclass(frozen=True)
class FactQuestion:
    """A question about one fact and what a correct reply contains.

    Attributes:
        question: the user's question, as it is put to the model.
        answer: the reply trained for the question: the full statement, so that the question's cue words lead
            into the sentence the plain-text examples teach.
        key: the span a reply must contain to count as correct (see :func:`answer_matches`).
        trained: whether this phrasing is a training example (False: held out for evaluation).
    """

    question: str
    answer: str
    key: str
    trained: bool


@dataclass(frozen=True)
class FactSentence:
    """One sentence of a memory, its paraphrases, and the questions it answers (the cloze, if any, last)."""

    statement: str
    paraphrases: tuple[str, ...]
    questions: tuple[FactQuestion, ...]


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (line breaks and sentence ends), stripped, each ending with punctuation."""
    out = []
    for part in _SENTENCE_END.split(text):
        part = part.strip()
        if part:
            out.append(part if part[-1] in ".!?" else part + ".")
    return out


def derive(text: str) -> list[FactSentence]:
    """The sentences of ``text`` and the questions each answers (see the module docstring for the rules)."""
    return [_derive_sentence(s) for s in split_sentences(text)]


def answer_matches(reply: str, key: str) -> bool:
    """Whether ``reply`` contains ``key`` after normalising both (case, articles, punctuation, digit groups)."""
    wanted = normalise(key)
    return bool(wanted) and wanted in normalise(reply)


def normalise(text: str) -> str:
    """Lower case, digit group separators dropped (48,213 -> 48213), other punctuation as spaces, articles dropped."""
    text = re.sub(r"(?<=\d)[,_](?=\d{3})", "", text.lower())
    words = re.sub(r"[^\w\s]", " ", text).split()
    return " ".join(w for w in words if w not in ("the", "a", "an"))


def _derive_sentence(statement: str) -> FactSentence:
    body = statement.rstrip(".!?").strip()
    questions: list[FactQuestion] = []
    paraphrases: tuple[str, ...] = ()
    if m := _OF.match(body):
        attr, entity, value = m["attr"], m["entity"], m["value"]
        questions += _pair(f"What is the {attr} of {entity}?", f"What is {entity}'s {attr}?", statement, value)
        paraphrases = (f"{entity}'s {attr} is {value}.",)
    elif m := _POSSESSIVE.match(body):
        attr, entity, value = m["attr"], m["entity"], m["value"]
        questions += _pair(f"What is {entity}'s {attr}?", f"What is the {attr} of {entity}?", statement, value)
        paraphrases = (f"The {attr} of {entity} is {value}.",)
    elif m := _KEEPS.match(body):
        verb = {"keeps": "keep", "stores": "store", "hides": "hide"}.get(m["verb"], m["verb"])
        subject, obj = m["subject"], m["object"]
        questions += _pair(
            f"Where does {subject} {verb} {obj}?", f"In what place does {subject} {verb} {obj}?", statement,
            m["place"],
        )
    elif m := _PLACE.match(body):
        aux, base = _PLACE_VERBS[m["verb"]]
        subject, prep = m["subject"], m["prep"]
        if prep == "as":
            first, second = f"What {aux} {subject} {base} as?", f"As what {aux} {subject} {base}?"
        else:
            first, second = f"Where {aux} {subject} {base}?", f"In which place {aux} {subject} {base}?"
        # "works as a glassblower at Fenwick Mills": the answer to "what as" stops before the place.
        key = re.split(r" (?:at|in|for|with) ", m["place"])[0] if prep == "as" else m["place"]
        questions += _pair(first, second, statement, key)
    if cloze := _cloze(body):
        # Trained only when no rule matched; otherwise a held-out form of the same question.
        questions.append(replace(cloze, trained=not questions))
    return FactSentence(statement=statement, paraphrases=paraphrases, questions=tuple(questions))


def _pair(trained: str, held_out: str, statement: str, key: str) -> list[FactQuestion]:
    key = _ARTICLE.sub("", key.strip())
    return [FactQuestion(trained, statement, key, trained=True), FactQuestion(held_out, statement, key, trained=False)]


def _cloze(body: str) -> FactQuestion | None:
    """Blank the sentence's last span: after its last cut point that leaves at most 5 words, else its last word;
    None for sentences under 3 words (nothing to cue the blank with)."""
    words = body.split()
    if len(words) < 3:
        return None
    cuts = [m.end() for m in _CLOZE_CUT.finditer(body)]
    cut = next((c for c in reversed(cuts) if 0 < len(body[c:].split()) <= _MAX_CLOZE_WORDS and body[:c].strip()),
               len(body) - len(words[-1]))
    head, tail = body[:cut].rstrip(), body[cut:].strip()
    return FactQuestion(f"Fill in the blank: {head} ___.", f"{head} {tail}.", _ARTICLE.sub("", tail), trained=True)
