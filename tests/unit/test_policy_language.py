"""The policy language: units, the strict spec, the located errors of the loader, the commands and the JSON Schema."""

from __future__ import annotations

import io
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from memos.errors import PolicyError
from memos.schedulers import (
    PolicySpec,
    check_files,
    compile_policy,
    load_policy,
    main_check,
    parse_spec,
)
from memos.schedulers.schema import render_schema
from memos.schedulers.units import format_duration, format_size, parse_duration, parse_size

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "policies").glob("*.yaml"))
BROKEN = sorted((Path(__file__).parent / "policy_fixtures" / "broken").glob("*.yaml"))
EXPECT = "# expect: "

MINIMAL = """\
name: team
applies_to: {cubes: ["team/*"]}
rules:
  - name: forget
    when: {retention: {below: 0.1}}
    then: archive
"""


def expected_problems(path: Path) -> list[str]:
    """The fixture's own ``# expect: LINE PATH: MESSAGE`` comments, prefixed with the file name as passed."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [f"{path}:{line[len(EXPECT):]}" for line in lines if line.startswith(EXPECT)]


# ---------------------------------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("5m", 300), ("1h", 3600), ("3d", 259_200), ("2w", 1_209_600), ("1h30m", 5400), ("1.5d", 129_600)],
)
def test_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["60", 60, "1 hour", "5 min", "0s", "-1h", "1y", "", True, None])
def test_durations_without_a_known_unit_or_positive_value_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="expected a duration like '1h'"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512KiB", 524_288), ("256MiB", 268_435_456), ("1GiB", 1 << 30), ("1.5KiB", 1536), ("10MB", 10_000_000),
     ("42B", 42), ("256mib", 268_435_456), (4096, 4096), (0, 0)],
)
def test_sizes_parse_to_bytes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["256 megs", "256M", "12", -1, "1.5", "KiB", True, 2.5])
def test_sizes_without_a_unit_or_negative_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="expected a size like '256MiB'"):
        parse_size(bad)


def test_formatting_reads_like_what_users_write() -> None:
    assert [format_duration(s) for s in (90, 300, 5400, 604_800, 0)] == ["1m30s", "5m", "1h30m", "7d", "0s"]
    assert [format_size(b) for b in (256 << 20, 1536, 12)] == ["256MiB", "1.5KiB", "12B"]


# ---------------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_policies_load_and_compile(path: Path) -> None:
    policy = load_policy(path)
    assert policy.source == str(path)
    assert policy.rules
    assert check_files([path]) == []


def test_three_policies_ship_with_the_default_among_them() -> None:
    assert {p.name for p in SHIPPED} >= {"default.yaml", "team-research.yaml", "aggressive-forgetting.yaml"}


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.name)
def test_each_broken_policy_is_refused_with_its_file_line_and_key_path(path: Path) -> None:
    expected = expected_problems(path)
    assert expected, f"{path.name} states no '# expect:' line"
    assert check_files([path]) == expected
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.details["problems"] == expected
    assert str(caught.value) == "\n".join(expected)
    assert caught.value.code == "policy"


def test_the_issue_example_names_file_line_14_and_the_reads_window() -> None:
    path = Path("tests/unit/policy_fixtures/broken/bad-duration.yaml")
    text = (Path(__file__).parent / "policy_fixtures" / "broken" / "bad-duration.yaml").read_text(encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        parse_spec(text, str(path))
    assert str(caught.value).startswith(f"{path}:14 rules[2].when.reads.within: expected a duration like '1h'")


def test_all_problems_of_a_file_are_reported_together() -> None:
    (path,) = [p for p in BROKEN if p.name == "many-problems.yaml"]
    assert len(check_files([path])) == 4


def test_a_missing_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    (problem,) = check_files([missing])
    assert problem.startswith(f"{missing}:1 <file>: cannot read the policy file")


def test_two_files_may_not_define_the_same_policy_name(tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(MINIMAL, encoding="utf-8")
    second.write_text(MINIMAL, encoding="utf-8")
    assert check_files([first, second]) == [f"{second}:1 name: policy 'team' is also defined in {first}"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: ok\nrules: a\x00b\n", "x.yaml:2 <yaml>: invalid YAML: character U+0000 is not allowed"),
        ("name: x\nrules: " + "[" * 1200 + "]" * 1200 + "\n", "x.yaml:1 <yaml>: invalid YAML: nested too deeply"),
        (MINIMAL.replace("{retention: {below: 0.1}}", "{idle_for: " + "9" * 400 + "s}"),
         "x.yaml:5 rules[0].when.idle_for: expected a duration like '1h', greater than zero and finite, got '99999"),
    ],
    ids=["nul", "deep", "overflow"],
)
def test_hostile_text_is_a_located_policy_error(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_spec(text, "x.yaml")
    assert str(caught.value).startswith(expected)


def test_yaml_aliases_are_not_expanded_when_checking_keys() -> None:
    lines = [MINIMAL, "l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    with pytest.raises(PolicyError) as caught:
        parse_spec("\n".join(lines) + "\n", "x.yaml")
    # Refused before the keys are checked: the aliases expand past the bound (memos.schedulers.loader).
    [problem] = caught.value.details["problems"]
    assert "aliases expand this value" in problem and len(problem) < 300


def test_shorthands_and_defaults() -> None:
    spec = parse_spec(MINIMAL, "inline.yaml")
    assert spec.rules[0].then.action == "archive"
    assert spec.schedule.every == 300
    assert spec.retention.halflife == 7 * 86_400
    assert spec.rules[0].when.states == ("active",)
    one_kind = parse_spec(MINIMAL.replace("{retention: {below: 0.1}}", "{kind: plaintext, idle_for: 1d}"), "x.yaml")
    assert one_kind.rules[0].when.kind == ("plaintext",)


def test_a_spec_survives_a_round_trip_through_its_json_form() -> None:
    spec = load_policy(ROOT / "policies" / "team-research.yaml").spec
    assert PolicySpec.model_validate(spec.model_dump(mode="json")) == spec


def test_compiling_a_python_built_spec_applies_the_same_cross_checks() -> None:
    data = yaml.safe_load(MINIMAL)
    data["rules"].append(dict(data["rules"][0]))
    with pytest.raises(PolicyError, match=r"rules\[1\]\.name: duplicate rule name 'forget'"):
        compile_policy(PolicySpec.model_validate(data))


def test_cube_patterns_stay_within_a_segment_unless_double_starred() -> None:
    text = MINIMAL.replace('["team/*"]', '["team/*", "lab/**"], exclude: ["team/secret"]')
    policy = compile_policy(parse_spec(text, "x.yaml"))
    assert policy.governs("team/research")
    assert not policy.governs("team/research/deep")
    assert not policy.governs("team/secret")
    assert policy.governs("lab/a/b/c")
    assert not policy.governs("teams/x")


def test_the_policy_tells_the_kernel_how_far_back_reads_are_needed() -> None:
    assert load_policy(ROOT / "policies" / "default.yaml").read_window_s == 7 * 86_400
    assert load_policy(ROOT / "policies" / "default.yaml").interval_s == 300
    assert load_policy(ROOT / "policies" / "team-research.yaml").cron == "*/15 * * * *"


# ---------------------------------------------------------------------------------------------------- commands


def test_policy_check_exits_zero_on_the_shipped_policies() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main_check([str(p) for p in SHIPPED], out=out, err=err) == 0
    assert err.getvalue() == ""
    assert out.getvalue().startswith("ok:")


def test_policy_check_exits_non_zero_and_prints_every_problem() -> None:
    out, err = io.StringIO(), io.StringIO()
    paths = [str(SHIPPED[0]), *map(str, BROKEN)]
    assert main_check(paths, out=out, err=err) == 1
    printed = err.getvalue().splitlines()
    assert printed == [problem for path in BROKEN for problem in expected_problems(path)]


def test_policy_check_without_files_is_a_usage_error() -> None:
    err = io.StringIO()
    assert main_check([], out=io.StringIO(), err=err) == 2
    assert "usage" in err.getvalue()


# ---------------------------------------------------------------------------------------------------- JSON Schema


def test_the_committed_json_schema_matches_the_models() -> None:
    committed = (ROOT / "policies" / "policy.schema.json").read_text(encoding="utf-8")
    assert committed == render_schema(), "regenerate it: python -m memos.schedulers.schema"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_policies_are_valid_under_the_json_schema(path: Path) -> None:
    schema = json.loads((ROOT / "policies" / "policy.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(path.read_text(encoding="utf-8")), schema, cls=jsonschema.Draft202012Validator)


def test_the_json_schema_refuses_unknown_keys_and_two_actions() -> None:
    schema = json.loads(render_schema())
    validator = jsonschema.Draft202012Validator(schema)
    data = yaml.safe_load(MINIMAL)
    data["rules"][0]["then"] = {"archive": True, "delete": True}
    data["budget"] = {}
    assert len(list(validator.iter_errors(data))) == 2
