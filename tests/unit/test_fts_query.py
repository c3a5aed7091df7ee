"""The lexical query built from free text: OR of distinct content words, FTS5 syntax quoted away."""

from __future__ import annotations

from memos.storage.sqlite import STOP_WORDS, fts_query


def test_stop_words_are_left_out_of_the_or_query() -> None:
    assert fts_query("When did Caroline go to the support group?") == '"caroline" OR "go" OR "support" OR "group"'


def test_a_query_of_only_stop_words_keeps_them() -> None:
    assert fts_query("What is it?") == '"what" OR "is" OR "it"'
    assert {"what", "is", "it"} <= STOP_WORDS


def test_words_are_distinct_lowercased_quoted_and_capped() -> None:
    assert fts_query('Owls OWLS "owls" NEAR(hunt)') == '"owls" OR "near" OR "hunt"'
    assert fts_query("one two three four", max_terms=2) == '"one" OR "two"'


def test_text_without_words_gives_no_query() -> None:
    assert fts_query("?! ()") is None
