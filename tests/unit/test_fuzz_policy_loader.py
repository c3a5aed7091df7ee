"""The policy loader on hostile text: every input is a valid spec or a ``PolicyError`` naming the file, quickly.

Hypothesis feeds ``parse_spec`` arbitrary text and mutations of the shipped policies (lines dropped, duplicated or
swapped, YAML syntax spliced in). A spec that parses must also compile and evaluate on an empty snapshot.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from memos.errors import PolicyError
from memos.schedulers import KernelSnapshot, compile_policy, evaluate, parse_spec
from memos.schedulers.spec import PolicySpec

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [p.read_text() for p in sorted((ROOT / "policies").glob("*.yaml"))]
FILENAME = "fuzz/policy.yaml"
PRINTABLE_TOKENS = (
    ":", ": ", "- ", "{", "}", "[", "]", ",", "&a ", "*a", "!!python/object:os.system ", "!!binary ", "!!set ", "~",
    "null", "1e999", "-1", "0x10", "'", '"', "\t", "  ", "\n", "|", ">", "? ", "%YAML 1.1\n", "---\n", "...\n",
    "<<: ", "1h", "-5m", "256MiB", "9EiB", "yes", "no", "true", ".nan", "2001-12-14t21:59:43Z", "\u202e",
    "\ufeff", "** ", "team/*", "allow_untrusted: true", "trust: untrusted", "then: {distill: {}}",
)
UNPRINTABLE_TOKENS = ("\x00", "\x1f", "\ud800", "\x85\x00")
printable = st.characters(exclude_categories=("Cc", "Cs"))


def nested_flow(depth: int) -> str:
    return "name: x\nrules: " + "[" * depth + "]" * depth + "\n"


def alias_bomb(levels: int) -> str:
    """Each line refers nine times to the one before: 9**levels nodes once every alias is followed."""
    lines = ["name: x", "applies_to: {cubes: ['team/*']}", "schedule: {every: 1m}",
             "rules: [{name: a, when: {stale: true}, then: archive}]", "l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@st.composite
def mutated_policies(draw: st.DrawFn, tokens: tuple[str, ...] = PRINTABLE_TOKENS, chars=printable) -> str:
    lines = draw(st.sampled_from(SHIPPED)).splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 6))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        edit = draw(st.sampled_from(["drop", "duplicate", "swap", "splice", "truncate"]))
        if edit == "drop":
            del lines[i]
        elif edit == "duplicate":
            lines.insert(i, lines[i])
        elif edit == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif edit == "splice":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.sampled_from(tokens) | st.text(chars, max_size=6)) + lines[i][at:]
        else:
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
    return "".join(lines)


def check_parses_or_refuses(text: str) -> None:
    """A valid spec compiles and evaluates; a refusal is a PolicyError whose every problem names the file."""
    try:
        spec = parse_spec(text, FILENAME)
    except PolicyError as exc:
        assert exc.details["problems"] and all(p.startswith(f"{FILENAME}:") for p in exc.details["problems"])
        return
    assert isinstance(spec, PolicySpec)
    assert evaluate(compile_policy(spec, FILENAME), KernelSnapshot([]), 1_750_000_000.0) == []


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(
    mutated_policies(PRINTABLE_TOKENS + UNPRINTABLE_TOKENS, st.characters(exclude_categories=())),
    st.text(st.characters(exclude_categories=())),
))
@example(text="name: a\x00b")
def test_any_text_is_a_valid_policy_or_a_policy_error_naming_the_file(text: str) -> None:
    check_parses_or_refuses(text)


@settings(max_examples=100, deadline=None)
@given(text=mutated_policies())
def test_mutated_shipped_policies_are_valid_or_refused_with_located_problems(text: str) -> None:
    check_parses_or_refuses(text)


@pytest.mark.parametrize("text", [
    pytest.param("name: a\x00b\n", id="nul"),
    pytest.param("name: \ud800\n", id="lone-surrogate"),
    pytest.param(nested_flow(2000), id="nested-2000"),
    pytest.param(nested_flow(50), id="nested-50"),
    "!!python/object/apply:os.system ['true']\n",
    "\ufeffname: x\n",
    "",
    "- just\n- a\n- list\n",
])
def test_hostile_documents_are_policy_errors(text: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_spec(text, FILENAME)
    assert FILENAME in str(err.value)


@pytest.fixture
def within_two_seconds():
    """Interrupt the test (TimeoutError) if it runs longer than two seconds of wall time."""

    def interrupt(signum: int, frame: object) -> None:
        raise TimeoutError("still running after 2 s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def test_an_alias_bomb_is_refused_promptly(within_two_seconds: None) -> None:
    with pytest.raises(PolicyError, match=r":9 <yaml>: aliases expand this value to 66,430 nodes"):
        parse_spec(alias_bomb(8), FILENAME)


def test_an_alias_bomb_under_an_enum_typed_key_is_refused_before_validation(within_two_seconds: None) -> None:
    """Issue 13: nine levels under ``when.kind`` (an enum) took 48 s and 536 MB in `memos policy check`: pydantic
    walked every expanded leaf. The expansion is bounded before anything is constructed; the anchor's line is named."""
    anchors = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    anchors += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    text = "\n".join(["name: x", "applies_to: {cubes: ['team/*']}", "schedule: {every: 1m}", "defs:",
                      *(f"  {a}" for a in anchors), "rules: [{name: a, when: {kind: *l8}, then: archive}]"]) + "\n"
    with pytest.raises(PolicyError) as caught:
        parse_spec(text, FILENAME)
    assert caught.value.details["problems"] == [
        f"{FILENAME}:9 <yaml>: aliases expand this value to 66,430 nodes (the limit is 20,000): an alias bomb, or a "
        "policy to write without aliases"
    ]


def test_aliases_that_expand_to_little_are_still_allowed() -> None:
    text = ("name: x\napplies_to: {cubes: ['team/*']}\nschedule: {every: 1m}\nrules:\n"
            "  - {name: a, when: &cold {kind: plaintext, idle_for: 30d}, then: archive}\n"
            "  - {name: b, when: *cold, then: archive}\n")
    assert [rule.when for rule in parse_spec(text, FILENAME).rules][0] == parse_spec(text, FILENAME).rules[1].when
