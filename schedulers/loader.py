"""Loading policy files: YAML -> :class:`PolicySpec` -> :class:`CompiledPolicy`, every problem located.

Each problem names the file, the line and the key path, one per line::

    policies/team.yaml:14 rules[2].when.reads.within: expected a duration like '1h' (units s, m, h, d, w), got '1 hour'

The YAML is composed into nodes first (they carry line marks) and constructed from those same nodes, so a
pydantic error path (``("rules", 2, "when", "reads", "within")``) can be walked down the node tree to its line.
Beyond the schema, the loader refuses duplicate keys (YAML would silently keep the last) and everything
:func:`memos.schedulers.spec.semantic_problems` finds. All problems of a file are reported at once: when some of
its rules (or other keys) have the wrong shape, the rules that did parse are still checked against each other
(duplicate names, dead rules, flapping pairs), so a file is not fixed in two rounds.

Aliases (``*name``) are allowed, but what they expand to is bounded *before* anything is constructed or validated:
a few lines of nested aliases ("billion laughs") expand to billions of nodes, and constructing or validating them
takes hours and gigabytes. A file whose nodes, with every alias followed, exceed ``MAX_EXPANDED_NODES`` is refused
with the line of the anchor that blows up. Counting is linear in the file (each distinct node is sized once).
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from memos.errors import PolicyError
from memos.schedulers.engine import CompiledPolicy, compile_policy
from memos.schedulers.spec import (
    Budgets,
    Loc,
    PolicySpec,
    Rule,
    flap_warnings,
    format_loc,
    rule_problems,
)
from memos.schedulers.units import quote, yaml_words

#: Nodes a policy may expand to with its aliases followed; the shipped policies have a few hundred.
MAX_EXPANDED_NODES = 20_000

_QUOTED = re.compile(r"'([^']*)'")
# Nouns for "unknown <noun> 'x'" by the key whose value is wrong.
_NOUNS = {"kind": "kind", "migrate": "kind", "state": "state", "trust": "trust level", "budget": "budget"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy file, at a 1-based line and a key path (``<yaml>`` for YAML syntax)."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} {self.path}: {self.message}"


def parse_spec(text: str, filename: str) -> PolicySpec:
    """Validate policy YAML ``text``; ``filename`` is only used in messages.

    Raises:
        PolicyError: with every problem, one per line in the message and as strings in ``details["problems"]``.
    """
    spec, _, problems, _ = _parse(text, filename)
    if problems:
        raise _error(filename, problems)
    assert spec is not None
    return spec


def load_spec(path: str | os.PathLike[str]) -> PolicySpec:
    """Read and validate a policy file.

    Raises:
        PolicyError: the file cannot be read or is not a valid policy (every problem, located).
    """
    return parse_spec(_read(path), str(path))


def load_policy(path: str | os.PathLike[str]) -> CompiledPolicy:
    """Read, validate and compile a policy file (the source shown in dry runs is ``str(path)``).

    Raises:
        PolicyError: the file cannot be read or is not a valid policy (every problem, located).
    """
    return compile_policy(load_spec(path), source=str(path))


def check_files(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Every problem in the given policy files, formatted ``file:line key.path: message``; empty when all are valid.

    Besides each file's own problems, two files may not define policies of the same name (the runtime schedules
    policies by name).
    """
    problems: list[str] = []
    names: dict[str, str] = {}
    for path in paths:
        filename = str(path)
        try:
            text = _read(path)
        except PolicyError as exc:
            problems.extend(exc.details["problems"])
            continue
        spec, root, found, _ = _parse(text, filename)
        problems.extend(str(problem) for problem in found)
        if spec is None or root is None:
            continue
        if spec.name in names:
            line, _ = _locate(root, ("name",))
            problems.append(str(Problem(filename, line, "name", f"policy {spec.name!r} is also defined in {names[spec.name]}")))
        names.setdefault(spec.name, filename)
    return problems


def check_warnings(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """What is valid but likely wrong in the given policy files, formatted like problems: rule pairs that can flap
    (:func:`memos.schedulers.spec.flapping_warnings`). In a file with problems, the pairs among the rules that
    parsed."""
    warnings: list[str] = []
    for path in paths:
        try:
            text = _read(path)
        except PolicyError:
            continue
        _, root, _, rules = _parse(text, str(path))
        if root is None:
            continue
        for loc, message in flap_warnings(rules):
            line, shown = _locate(root, loc)
            warnings.append(str(Problem(str(path), line, format_loc(shown), message)))
    return warnings


# ---------------------------------------------------------------------------------------------------- internals


def _read(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else f"not UTF-8 text ({exc.reason})"
        problem = Problem(str(path), 1, "<file>", f"cannot read the policy file: {reason}")
        raise _error(str(path), [problem]) from exc


def _error(filename: str, problems: list[Problem]) -> PolicyError:
    lines = [str(problem) for problem in problems]
    return PolicyError("\n".join(lines), problems=lines, file=filename)


class _TooLarge(Exception):
    def __init__(self, node: Node, size: int) -> None:
        self.node, self.size = node, size


def _compose(text: str) -> tuple[Node | None, Any]:
    """The YAML root node (with line marks) and the data constructed from that same node.

    Raises:
        _TooLarge: aliases expand the document past ``MAX_EXPANDED_NODES`` (checked before constructing anything).
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _check_expansion(root)
        return root, (loader.construct_document(root) if root is not None else None)
    finally:
        loader.dispose()


def _check_expansion(root: Node) -> None:
    """Raise ``_TooLarge`` naming the node to blame if ``root`` expands past the bound with its aliases followed.

    Sizes are computed once per distinct node (aliases share nodes), children before parents, without recursion.
    The node blamed is the smallest one over the bound on the path of largest children: the anchor that explodes.
    """
    sizes: dict[int, int] = {}

    def children(node: Node) -> list[Node]:
        if isinstance(node, MappingNode):
            return [n for pair in node.value for n in pair]
        if isinstance(node, SequenceNode):
            return list(node.value)
        return []

    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in sizes:
            continue
        if not expanded:
            stack.append((node, True))
            stack.extend((child, False) for child in children(node) if id(child) not in sizes)
            continue
        # Capped: the exact count of a bomb is astronomically large and only its exceeding the bound matters.
        sizes[id(node)] = min(1 + sum(sizes[id(child)] for child in children(node)), 10 * MAX_EXPANDED_NODES)
    if sizes[id(root)] <= MAX_EXPANDED_NODES:
        return
    node = root
    while True:
        bigger = [child for child in children(node) if sizes[id(child)] > MAX_EXPANDED_NODES]
        if not bigger:
            raise _TooLarge(node, sizes[id(node)])
        node = max(bigger, key=lambda child: sizes[id(child)])


def _parse(text: str, filename: str) -> tuple[PolicySpec | None, Node | None, list[Problem], list[tuple[int, Rule]]]:
    """The spec (None if invalid), the YAML root node (None if not YAML), every problem, in line order, and the
    rules that parsed with their index (all of them when the spec is valid)."""
    try:
        root, data = _compose(text)
    except yaml.YAMLError as exc:
        return None, None, [_yaml_problem(exc, text, filename)], []
    except RecursionError:
        # PyYAML composes recursively: thousands of nested brackets exhaust the stack.
        return None, None, [Problem(filename, 1, "<yaml>", "invalid YAML: nested too deeply")], []
    except _TooLarge as exc:
        at_least = "at least " if exc.size >= 10 * MAX_EXPANDED_NODES else ""
        return None, None, [Problem(
            filename, exc.node.start_mark.line + 1, "<yaml>",
            f"aliases expand this value to {at_least}{exc.size:,} nodes (the limit is {MAX_EXPANDED_NODES:,}): "
            "an alias bomb, or a policy to write without aliases",
        )], []
    if root is None or not isinstance(data, dict):
        line = root.start_mark.line + 1 if root is not None else 1
        found = "an empty file" if root is None else f"a {type(data).__name__}"
        return None, root, [Problem(filename, line, "<root>", f"expected a policy mapping (name, applies_to, rules, ...), got {found}")], []
    problems = _duplicate_keys(root, filename)
    try:
        spec = PolicySpec.model_validate(data)
    except ValidationError as exc:
        problems.extend(_validation_problems(exc, root, filename))
        spec = None
    if spec is not None:
        rules, budgets = list(enumerate(spec.rules)), spec.budgets
    else:
        rules, budgets = _parsed_parts(data)
    for loc, message in rule_problems(rules, budgets):
        line, shown = _locate(root, loc)
        problems.append(Problem(filename, line, format_loc(shown), message))
    problems.sort(key=lambda problem: problem.line)
    return (spec if not problems else None), root, problems, rules


def _parsed_parts(data: dict[str, Any]) -> tuple[list[tuple[int, Rule]], Budgets | None]:
    """Of a policy whose shape is invalid: the rules that are valid on their own (with their index) and the
    budgets (None if they are invalid), for the cross-rule checks."""
    rules: list[tuple[int, Rule]] = []
    raw_rules = data.get("rules")
    if isinstance(raw_rules, list):
        for index, item in enumerate(raw_rules):
            try:
                rules.append((index, Rule.model_validate(item)))
            except ValidationError:
                continue  # its own problems are already reported
    try:
        budgets: Budgets | None = Budgets.model_validate(data.get("budgets") or {})
    except ValidationError:
        budgets = None
    return rules, budgets


def _yaml_problem(exc: yaml.YAMLError, text: str, filename: str) -> Problem:
    if isinstance(exc, yaml.reader.ReaderError):
        # Raised before any mark exists: a character YAML does not allow (NUL, a lone surrogate, ...).
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        return Problem(filename, line, "<yaml>", f"invalid YAML: character U+{exc.character:04X} is not allowed")
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None and context_mark.line + 1 != line:
        context += f" started at line {context_mark.line + 1}"
    message = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    return Problem(filename, line, "<yaml>", " ".join(message.split()))


def _duplicate_keys(root: Node, filename: str) -> list[Problem]:
    """Keys given twice in one mapping. Each node is visited once: YAML aliases share nodes, and following every
    alias again would make a small "billion laughs" file take hours."""
    problems: list[Problem] = []
    seen: set[int] = set()
    stack: list[tuple[Node, Loc]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                name = key.value if isinstance(key, ScalarNode) else None
                if name is not None and name in first:
                    problems.append(
                        Problem(filename, key.start_mark.line + 1, format_loc((*loc, name)),
                                f"duplicate key (first at line {first[name]})")
                    )
                if name is not None:
                    first.setdefault(name, key.start_mark.line + 1)
                stack.append((value, (*loc, name) if name is not None else loc))
        elif isinstance(node, SequenceNode):
            stack.extend((item, (*loc, index)) for index, item in enumerate(node.value))
    return problems


def _locate(root: Node, loc: Loc) -> tuple[int, Loc]:
    """The line of the deepest node ``loc`` reaches, and ``loc`` cut where it enters a scalar.

    A path continues past a scalar when a validator reshaped the value (``kind: vector`` is checked as the list
    ``[vector]``, so pydantic says ``kind.0``): the user wrote ``kind``, so that is the path to show. A path that
    names a key the mapping lacks (a required key) is kept whole and located at the mapping.
    """
    node, line = root, root.start_mark.line + 1
    for depth, part in enumerate(loc):
        if isinstance(node, MappingNode) and isinstance(part, str):
            match = next((pair for pair in node.value if isinstance(pair[0], ScalarNode) and pair[0].value == part), None)
            if match is None:
                return line, loc
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line, loc[:depth] if isinstance(node, ScalarNode) else loc
    return line, loc


def _validation_problems(exc: ValidationError, root: Node, filename: str) -> list[Problem]:
    errors = exc.errors()
    # pydantic counts only the valid items against min_length: "rules: []" is the problem only if no item failed.
    failed_items = {tuple(e["loc"][:i]) for e in errors for i, part in enumerate(e["loc"]) if isinstance(part, int)}
    problems = []
    for err in errors:
        loc: Loc = tuple(err["loc"])
        if err["type"] == "too_short" and loc in failed_items:
            continue
        line, shown = _locate(root, loc)
        problems.append(Problem(filename, line, format_loc(shown), _message(err, loc)))
    return problems


def _message(err: Any, loc: Loc) -> str:
    """pydantic's error in the words of a policy author."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "missing":
        return "required key is missing"
    if kind in ("enum", "literal_error"):
        noun = next((_NOUNS.get(p, "value") for p in reversed(loc) if isinstance(p, str)), "value")
        expected = ", ".join(_QUOTED.findall(ctx.get("expected", ""))) or yaml_words(str(ctx.get("expected", "")))
        if expected == "true":  # an action flag such as `archive: true`: it is there or it is not
            return f"expected true (or leave the key out), got {quote(err['input'])}"
        return f"unknown {noun} {quote(err['input'])}; expected one of {expected}"
    if kind == "too_short" and loc == ("rules",):
        return "a policy needs at least one rule"
    messages = {
        "int_type": "expected an integer",
        "int_parsing": "expected an integer",
        "int_from_float": "expected an integer",
        "bool_type": "expected true or false",
        "bool_parsing": "expected true or false",
        "float_type": "expected a number",
        "float_parsing": "expected a number",
        "string_type": "expected a string",
        "list_type": "expected a list",
        "tuple_type": "expected a list",
        "dict_type": "expected a mapping",
        "model_type": "expected a mapping",
        "model_attributes_type": "expected a mapping",
    }
    if kind in messages:
        return f"{messages[kind]}, got {quote(err['input'])}"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        hint = ""
        if kind == "less_than_equal" and limit == 1.0 and isinstance(err["input"], int | float) and err["input"] > 1:
            hint = f" (a fraction: 0.9 means 90%; did you mean {err['input'] / 100:g}?)"
        return f"must be {bounds[kind]} {quote(limit)}, got {quote(err['input'])}{hint}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"allows at most {ctx.get('max_length')} item(s)"
    text = yaml_words(str(err["msg"]))
    return text[:1].lower() + text[1:]


def _unknown_key(loc: Loc) -> str:
    key = str(loc[-1])
    allowed = _fields_at(loc[:-1])
    message = f"unknown key {quote(key)}"
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    if allowed:
        message += f"; expected one of {', '.join(allowed)}"
    return message


def _fields_at(loc: Loc) -> list[str]:
    """The keys the model at ``loc`` accepts (empty if ``loc`` is not a model)."""
    current: Any = PolicySpec
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel) and isinstance(part, str):
            field = current.model_fields.get(part)
            if field is None:
                return []
            current = field.annotation
        elif get_origin(current) in (tuple, list) and isinstance(part, int):
            current = get_args(current)[0]
        elif get_origin(current) is dict and isinstance(part, str):
            current = get_args(current)[1]
        else:
            return []
    current = _unwrap(current)
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` (the only unions in the spec)."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
        else:
            return annotation
