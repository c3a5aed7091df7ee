"""The LoCoMo loader on a tiny LoCoMo-shaped file written here (no real data in the repository)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memos.bench.locomo import load_locomo, normalize_evidence

SAMPLE = {
    "sample_id": "conv-x",
    "conversation": {
        "speaker_a": "Ann",
        "speaker_b": "Bob",
        "session_2_date_time": "9:00 am on 2 June, 2021",
        "session_2": [
            {"speaker": "Bob", "dia_id": "D2:1", "text": "I adopted a cat."},
            {"speaker": "Ann", "dia_id": "D2:2", "text": "Look!", "img_url": ["x"], "blip_caption": "a photo of a cat"},
        ],
        "session_1_date_time": "8:00 pm on 1 May, 2021",
        "session_1": [
            {"speaker": "Ann", "dia_id": "D1:1", "text": "Hi Bob."},
            {"speaker": "Bob", "dia_id": "D1:2", "text": "Hi Ann, I ran a marathon."},
        ],
        "session_3_date_time": "10:00 am on 3 July, 2021",
    },
    "qa": [
        {"question": "What did Bob run?", "answer": "a marathon", "evidence": ["D1:2"], "category": 4},
        {"question": "When did Bob adopt a cat?", "answer": 2021, "evidence": ["D2:1; D1:2"], "category": 2},
        {"question": "What pet?", "answer": "cat", "evidence": ["D:2:2", "D 2:1"], "category": 1},
        {"question": "What did Ann paint?", "evidence": ["D1:1"], "category": 5, "adversarial_answer": "a cat"},
        {"question": "Where?", "answer": "home", "evidence": ["D"], "category": 3},
        {"question": "Why?", "answer": "fun", "evidence": [], "category": 3},
    ],
}


@pytest.fixture()
def conversation(tmp_path: Path):
    path = tmp_path / "locomo.json"
    path.write_text(json.dumps([SAMPLE]), encoding="utf-8")
    [conv] = load_locomo(path)
    return conv


def test_sessions_are_ordered_by_number_and_sessions_without_turns_are_skipped(conversation) -> None:
    assert [s.number for s in conversation.sessions] == [1, 2]
    assert conversation.sessions[0].date_time == "8:00 pm on 1 May, 2021"
    assert conversation.speakers == ("Ann", "Bob")


def test_turns_keep_speaker_text_and_image_caption_in_conversation_order(conversation) -> None:
    turns = [(s.number, t.dia_id, t.speaker, t.text, t.image_caption) for s, t in conversation.turns()]
    assert turns == [
        (1, "D1:1", "Ann", "Hi Bob.", None),
        (1, "D1:2", "Bob", "Hi Ann, I ran a marathon.", None),
        (2, "D2:1", "Bob", "I adopted a cat.", None),
        (2, "D2:2", "Ann", "Look!", "a photo of a cat"),
    ]


def test_evidence_is_normalised_and_answers_are_text(conversation) -> None:
    qa = conversation.qa
    assert qa[1].evidence == ("D2:1", "D1:2")
    assert qa[1].answer == "2021"
    assert qa[2].evidence == ("D2:2", "D2:1")
    assert qa[3].answer == ""


def test_asked_questions_are_categories_one_to_four_with_evidence(conversation) -> None:
    asked = conversation.asked()
    assert [q.question for q in asked] == ["What did Bob run?", "When did Bob adopt a cat?", "What pet?"]
    assert {q.category for q in asked} <= {1, 2, 3, 4}


def test_normalize_evidence_drops_unknown_turns_and_duplicates() -> None:
    assert normalize_evidence(["D1:2", "D01:2", "D9:9", "x"], known={"D1:2"}) == ("D1:2",)
    assert normalize_evidence(["D8:6; D9:17", "D8:6,D3:1"]) == ("D8:6", "D9:17", "D3:1")


def test_a_file_that_is_not_locomo_shaped_names_the_sample(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"sample_id": "s1", "qa": []}]), encoding="utf-8")
    with pytest.raises(ValueError, match="s1"):
        load_locomo(path)
    path.write_text(json.dumps({"not": "a list"}), encoding="utf-8")
    with pytest.raises(ValueError, match="list of samples"):
        load_locomo(path)
