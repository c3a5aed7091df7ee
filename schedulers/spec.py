"""The policy language: strict pydantic models of a lifecycle policy file, and the rules that tie its parts together.

A policy file is YAML with this shape (docs/policies.md is the reference for every key)::

    name: team-default                       # [a-z0-9][a-z0-9_-]*
    description: ...
    applies_to: {cubes: ["team/*"], exclude: ["team/secret"]}
    budgets: {activation_bytes: 256MiB, loaded_adapters: 2, plaintext_count: 5000, plaintext_bytes: 64MiB}
    schedule: {every: 5m}                    # or {cron: "*/5 * * * *"}
    retention: {halflife: 7d, tag_weights: {important: 4}, untrusted_weight: 1}
    rules:                                   # ordered; the first rule that acts on a memory wins
      - name: promote-hot
        when: {kind: plaintext, reads: {within: 1h, at_least: 5}}
        then: {migrate: activation}

Every model forbids unknown keys. Single-model checks (a bound pair, exactly one action) live on the models; checks
that relate parts of a policy (rule names, budget references, rules that could never fire) are in
:func:`semantic_problems`, so that a file with several such mistakes reports all of them at once.

What each action may touch is defined here, once, by :class:`Then` (``kinds``, ``states``, ``spares_pinned``,
``needs_trust``): the loader uses it to refuse rules that can never fire, the engine to enforce the guards.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from memos.schedulers.units import (
    DURATION_PATTERN,
    SIZE_PATTERN,
    format_duration,
    parse_duration,
    parse_size,
    quote,
)
from memos.types import AdoptionGate, DistillRecipe, Kind, KVCompression, Tag, Trust

Loc = tuple[str | int, ...]
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")


def format_loc(loc: Loc) -> str:
    """A key path as a user writes it: ``rules[2].when.reads.within`` (``<root>`` for the empty path); a key that
    is not a plain word is quoted (``tag_weights['my tag']``)."""
    text = ""
    for part in loc:
        if isinstance(part, int) or not _PLAIN_KEY.fullmatch(part):
            text += f"[{quote(part)}]"
        else:
            text += f".{part}" if text else part
    return text or "<root>"


# ---------------------------------------------------------------------------------------------------- scalar types

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")
_SEGMENT_RE = re.compile(r"^(\*\*|[a-z0-9_\-*?]{1,64})$")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# minute, hour, day of month, month, day of week: (low, high, names accepted in place of numbers)
_CRON_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 6, _WEEKDAYS),
)


def _check_name(value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise ValueError(f"expected a name of lowercase letters, digits, '-' and '_' like 'promote-hot', got {quote(value)}")
    return value


def _check_cube_pattern(value: str) -> str:
    if not all(_SEGMENT_RE.fullmatch(segment) for segment in value.split("/")):
        raise ValueError(
            f"expected a cube pattern like 'team/*' or 'agent/**' (lowercase segments of [a-z0-9_-], "
            f"'*' and '?' within a segment, '**' for any number of segments), got {quote(value)}"
        )
    return value


def _check_cron_value(token: str, field: str, low: int, high: int, names: tuple[str, ...]) -> None:
    if names and token.lower() in names:
        return
    if field == "day of week":
        # APScheduler 3 counts weekdays from Monday=0, crontab from Sunday=0: a number would fire on the wrong day.
        raise ValueError(f"use day names (mon..sun) in the day-of-week field of a cron expression, got {quote(token)}")
    if not (token.isascii() and token.isdigit()) or not low <= int(token) <= high:
        hint = f" or {names[0]}..{names[-1]}" if names else ""
        raise ValueError(f"cron {field} must be {low}..{high}{hint}, got {quote(token)}")


def _check_cron(value: str) -> str:
    fields = value.split()
    if len(fields) != 5:
        raise ValueError(f"expected a cron expression of 5 fields like '*/5 * * * *', got {quote(value)}")
    for text, (field, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in text.split(","):
            body, _, step = part.partition("/")
            if step and (not (step.isascii() and step.isdigit()) or int(step) == 0):
                raise ValueError(f"cron {field} step must be a positive integer, got {quote(part)}")
            if body == "*":
                continue
            for token in body.split("-", 1):
                _check_cron_value(token, field, low, high, names)
    return value


def _listify(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Name = Annotated[str, AfterValidator(_check_name)]
CubePattern = Annotated[str, AfterValidator(_check_cube_pattern)]
Cron = Annotated[str, AfterValidator(_check_cron)]
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["90s", "5m", "1h", "3d", "2w"]}),
]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": SIZE_PATTERN, "examples": ["512KiB", "256MiB", "1GiB"]},
            ]
        }
    ),
]
Count = Annotated[int, Field(strict=True, ge=0)]
Fraction = Annotated[float, Field(strict=True, ge=0.0, le=1.0, allow_inf_nan=False)]
Weight = Annotated[float, Field(strict=True, gt=0.0, allow_inf_nan=False)]
Ratio = Annotated[float, Field(strict=True, ge=0.0, allow_inf_nan=False)]
MAX_PRESSURE = 10.0  # a budget pressure above this is a percentage typed for a fraction (90 for 0.9)
MemoryState = Literal["active", "archived"]
KindSet = Annotated[
    tuple[Kind, ...], BeforeValidator(_listify, json_schema_input_type=Kind | list[Kind]), Field(min_length=1)
]
StateSet = Annotated[
    tuple[MemoryState, ...],
    BeforeValidator(_listify, json_schema_input_type=MemoryState | list[MemoryState]),
    Field(min_length=1),
]
BudgetName = Literal["activation_bytes", "loaded_adapters", "plaintext_count", "plaintext_bytes"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------------- policy parts


class AppliesTo(_Strict):
    """Which cubes the policy governs: a cube matches if it matches a ``cubes`` pattern and no ``exclude`` one."""

    cubes: tuple[CubePattern, ...] = Field(min_length=1, description="Cube glob patterns, e.g. 'team/*'.")
    exclude: tuple[CubePattern, ...] = Field(default=(), description="Cube glob patterns taken out of `cubes`.")


class Budgets(_Strict):
    """Resource limits over the cubes the policy governs. Unset means unlimited (and no pressure to refer to)."""

    activation_bytes: Size | None = Field(default=None, description="Total KV-cache bytes of activation memories.")
    loaded_adapters: Annotated[int, Field(strict=True, ge=1)] | None = Field(
        default=None, description="LoRA adapters the model host keeps loaded at once."
    )
    plaintext_count: Count | None = Field(default=None, description="Active memories per cube.")
    plaintext_bytes: Size | None = Field(default=None, description="Content bytes of active memories per cube.")


class Schedule(_Strict):
    """When the runtime evaluates the policy: exactly one of ``every`` and ``cron``."""

    every: Duration | None = Field(default=None, description="Interval between evaluations, e.g. '5m'.")
    cron: Cron | None = Field(default=None, description="Five-field cron expression; weekdays by name (mon..sun).")

    @model_validator(mode="after")
    def _one_trigger(self) -> Schedule:
        if (self.every is None) == (self.cron is None):
            raise ValueError("set exactly one of 'every' (an interval like '5m') and 'cron'")
        return self


class Retention(_Strict):
    """Parameters of the retention score (see schedulers/retention.py and docs/policies.md for the formula)."""

    halflife: Duration = Field(default=7 * 86_400.0, description="Half-life of an unread memory of importance 1.")
    tag_weights: dict[Tag, Weight] = Field(
        default_factory=dict, description="Importance factor per tag; a memory's factors multiply."
    )
    untrusted_weight: Weight = Field(default=1.0, description="Importance factor of untrusted memories.")


# ---------------------------------------------------------------------------------------------------- conditions


class Reads(_Strict):
    """Reads (and search hits) of a memory: within a trailing window, or over its lifetime when ``within`` is unset."""

    within: Duration | None = Field(default=None, description="Trailing window; unset counts every read ever.")
    at_least: Count | None = None
    at_most: Count | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Reads:
        if self.at_least is None and self.at_most is None:
            raise ValueError("set 'at_least', 'at_most' or both")
        if self.at_least is not None and self.at_most is not None and self.at_least > self.at_most:
            raise ValueError(f"at_least ({self.at_least}) is greater than at_most ({self.at_most})")
        return self


class Score(_Strict):
    """A strict range on a score in [0, 1]."""

    below: Fraction | None = None
    above: Fraction | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Score:
        if self.below is None and self.above is None:
            raise ValueError("set 'below', 'above' or both")
        if self.below is not None and self.above is not None and self.above >= self.below:
            raise ValueError(f"above ({self.above}) must be less than below ({self.below})")
        return self


class SizeRange(_Strict):
    """An inclusive range on a memory's ``size_bytes``."""

    at_least: Size | None = None
    at_most: Size | None = None

    @model_validator(mode="after")
    def _bounded(self) -> SizeRange:
        if self.at_least is None and self.at_most is None:
            raise ValueError("set 'at_least', 'at_most' or both")
        if self.at_least is not None and self.at_most is not None and self.at_least > self.at_most:
            raise ValueError(f"at_least ({self.at_least}) is greater than at_most ({self.at_most})")
        return self


class TagMatch(_Strict):
    """``any``: has at least one of them; ``all``: has every one; ``none``: has none of them."""

    any: tuple[Tag, ...] = ()
    all: tuple[Tag, ...] = ()
    none: tuple[Tag, ...] = ()

    @model_validator(mode="after")
    def _non_empty(self) -> TagMatch:
        if not (self.any or self.all or self.none):
            raise ValueError("list tags under 'any', 'all' or 'none'")
        return self


class BudgetPressure(_Strict):
    """Used / limit of a budget, projected over the actions planned so far in this evaluation (strict bounds)."""

    budget: BudgetName
    above: Ratio | None = None
    below: Ratio | None = None

    @field_validator("above", "below")
    @classmethod
    def _a_fraction_not_a_percentage(cls, value: float | None) -> float | None:
        if value is not None and value > MAX_PRESSURE:
            raise ValueError(
                f"budget pressure is used / limit (0.9 = 90% of the budget, 1.2 = 20% over it); {value:g} would be "
                f"{value:g} times the budget: did you mean {value / 100:g}?"
            )
        return value

    @model_validator(mode="after")
    def _bounded(self) -> BudgetPressure:
        if self.below is None and self.above is None:
            raise ValueError("set 'above', 'below' or both")
        if self.below is not None and self.above is not None and self.above >= self.below:
            raise ValueError(f"above ({self.above}) must be less than below ({self.below})")
        return self


class When(_Strict):
    """Conditions of a rule; all that are set must hold. ``state`` defaults to ``active``."""

    kind: KindSet | None = Field(default=None, description="One kind or a list of kinds.")
    state: StateSet | None = Field(default=None, description="active (default) and/or archived.")
    older_than: Duration | None = Field(default=None, description="Created at least this long ago.")
    idle_for: Duration | None = Field(
        default=None, description="Not read, written or updated for this long (a migration is not a use).")
    unchanged_for: Duration | None = Field(default=None, description="Current version at least this old.")
    resident_for: Duration | None = Field(
        default=None, description="Has had its current kind at least this long (a migration restarts it): hysteresis "
        "against promote/demote flapping.")
    reads: Reads | None = None
    retention: Score | None = Field(default=None, description="Retention score range (0..1).")
    trust: Trust | None = None
    tags: TagMatch | None = None
    size: SizeRange | None = Field(default=None, description="Range on the memory's size_bytes.")
    stale: StrictBool | None = Field(default=None, description="Derived payload out of date with its sources.")
    pinned: StrictBool | None = None
    budget_pressure: BudgetPressure | None = None

    @model_validator(mode="after")
    def _non_empty(self) -> When:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("a rule needs at least one condition (an empty 'when' would act on every memory)")
        return self

    @property
    def states(self) -> tuple[str, ...]:
        return self.state or ("active",)


# ---------------------------------------------------------------------------------------------------- actions


class DistillArgs(_Strict):
    """Train one adapter per group of matching memories of a cube; groups are balanced, at most ``max_group``.
    The adapter is adopted (used in place of its sources) when its evaluation passes ``gate``; ``recipes`` are tried
    in order until one does (none: the model host's default recipe)."""

    min_group: Annotated[int, Field(strict=True, ge=1)] = 8
    max_group: Annotated[int, Field(strict=True, ge=1, le=256)] = 64
    gate: AdoptionGate = Field(default_factory=AdoptionGate, description="Thresholds for adoption.")
    recipes: list[DistillRecipe] = Field(default_factory=list, max_length=4,
                                         description="Recipes to try in order until one is adopted.")

    @model_validator(mode="after")
    def _ordered(self) -> DistillArgs:
        if self.min_group > self.max_group:
            raise ValueError(f"min_group ({self.min_group}) is greater than max_group ({self.max_group})")
        return self


class FuseArgs(_Strict):
    """Merge plaintext memories that say the same. ``by: words`` (default): near-duplicates by word-set Jaccard
    similarity at least ``similarity``, planned as ``fuse`` keeping the most-read one's text. ``by: meaning``: the
    kernel groups them by the cosine similarity of their embeddings (at least ``similarity``) and its summariser
    writes each group's text (planned as one ``merge`` per cube and trust level)."""

    by: Literal["words", "meaning"] = "words"
    similarity: Annotated[float, Field(strict=True, gt=0.0, le=1.0, allow_inf_nan=False)] = 0.9
    max_group: Annotated[int, Field(strict=True, ge=2, le=64)] = 16
    keep_sources: StrictBool = False


class CompressArgs(_Strict):
    """Summarise a memory longer than ``max_bytes`` into a new memory of at most ``max_bytes``, derived from it; the
    source is archived unless ``keep_sources``."""

    max_bytes: Annotated[Size, Field(gt=0)]
    keep_sources: StrictBool = False


ActionName = Literal["migrate", "distill", "fuse", "compress", "archive", "delete", "pin"]
_BARE_ACTIONS: dict[str, Any] = {"archive": True, "delete": True, "pin": True, "distill": {}, "fuse": {}}
_ALL_KINDS = frozenset(Kind)
_PARTICIPLES = {
    "distill": "distilled",
    "fuse": "fused",
    "compress": "compressed",
    "archive": "archived",
    "delete": "deleted",
    "pin": "pinned",
}


def _then_from_shorthand(value: Any) -> Any:
    if isinstance(value, str):
        if value not in _BARE_ACTIONS:
            raise ValueError(
                f"unknown action {quote(value)}; write one of {', '.join(_BARE_ACTIONS)} or a mapping with one of "
                "migrate, distill, fuse, compress, archive, delete, pin"
            )
        return {value: _BARE_ACTIONS[value]}
    return value


def _then_json_schema(schema: dict[str, Any]) -> None:
    mapping = {**schema, "minProperties": 1, "maxProperties": 1}
    schema.clear()
    schema["anyOf"] = [{"type": "string", "enum": list(_BARE_ACTIONS)}, mapping]


class Then(_Strict):
    """The action of a rule: exactly one key. ``archive``, ``delete``, ``pin``, ``distill`` and ``fuse`` may be
    written as a bare word (``then: archive``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_then_json_schema)

    migrate: Kind | None = Field(default=None, description="plaintext (demote) or activation (promote).")
    compression: KVCompression | None = Field(
        default=None,
        description="With migrate: activation, how the KV cache is stored, e.g. int8, snapkv@0.5, int8+sink_window@0.5.",
    )
    distill: DistillArgs | None = None
    fuse: FuseArgs | None = None
    compress: CompressArgs | None = None
    archive: Literal[True] | None = None
    delete: Literal[True] | None = None
    pin: Literal[True] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _then_from_shorthand(value)

    @model_validator(mode="after")
    def _one_action(self) -> Then:
        chosen = [name for name in type(self).model_fields if name != "compression" and getattr(self, name) is not None]
        if self.compression is not None and self.migrate != Kind.ACTIVATION:
            raise ValueError("compression goes with migrate: activation only")
        if len(chosen) != 1:
            listed = ", ".join(chosen) if chosen else "none"
            raise ValueError(f"set exactly one action (migrate, distill, fuse, compress, archive, delete, pin), got {listed}")
        return self

    @property
    def action(self) -> ActionName:
        return next(name for name in type(self).model_fields  # type: ignore[return-value]
                    if name != "compression" and getattr(self, name) is not None)

    @property
    def verb(self) -> str:
        """The action as a past participle, for messages ("pinned memories are never archived")."""
        if self.migrate is not None:
            return "promoted" if self.promotes else "demoted"
        return _PARTICIPLES[self.action]

    @property
    def promotes(self) -> bool:
        """A migration to a costlier kind: the trust guard applies."""
        return self.migrate == Kind.ACTIVATION

    @property
    def demotes(self) -> bool:
        return self.migrate == Kind.PLAINTEXT

    @property
    def kinds(self) -> frozenset[Kind]:
        """The kinds of memory this action can change (a memory of another kind is left to later rules)."""
        if self.migrate == Kind.ACTIVATION:
            return frozenset({Kind.PLAINTEXT})
        if self.migrate == Kind.PLAINTEXT:
            return frozenset({Kind.ACTIVATION, Kind.PARAMETRIC})
        if self.migrate is not None:
            return frozenset()
        if self.distill is not None:
            return frozenset({Kind.PLAINTEXT, Kind.ACTIVATION})
        if self.fuse is not None or self.compress is not None:
            return frozenset({Kind.PLAINTEXT})
        return _ALL_KINDS

    @property
    def states(self) -> frozenset[str]:
        """Only a tombstone can follow an archive; everything else acts on active memories."""
        return frozenset({"active", "archived"}) if self.delete else frozenset({"active"})

    @property
    def spares_pinned(self) -> bool:
        """Pinned memories are never archived, deleted, demoted, fused away or rewritten."""
        return bool(self.archive or self.delete or self.demotes or self.fuse or self.compress)

    @property
    def needs_trust(self) -> bool:
        """Untrusted memories are not promoted or distilled unless the rule says so."""
        return self.promotes or self.distill is not None


# ---------------------------------------------------------------------------------------------------- the policy


class Rule(_Strict):
    """One rule: conditions, one action, and optional limits."""

    name: Name
    description: str = ""
    when: When
    then: Then
    allow_untrusted: StrictBool = Field(
        default=False, description="Let this rule promote or distill untrusted memories."
    )
    limit: Annotated[int, Field(strict=True, ge=1)] | None = Field(
        default=None, description="At most this many actions per evaluation (visiting memories in the rule's order)."
    )

    @property
    def trust_guarded(self) -> bool:
        return self.then.needs_trust and not self.allow_untrusted and self.when.trust != Trust.UNTRUSTED


class PolicySpec(_Strict):
    """A lifecycle policy file."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="memos lifecycle policy")

    name: Name
    description: str = ""
    applies_to: AppliesTo
    budgets: Budgets = Budgets()
    schedule: Schedule = Schedule(every="5m")
    retention: Retention = Retention()
    rules: tuple[Rule, ...] = Field(min_length=1, description="Ordered; the first rule that acts on a memory wins.")


def semantic_problems(spec: PolicySpec) -> list[tuple[Loc, str]]:
    """Problems that relate parts of a valid-shaped policy, each with the key path it is about.

    Checks: rule names are unique; every ``budget_pressure`` names a budget the policy sets; ``migrate`` targets
    plaintext or activation; and no rule is dead on arrival (its kinds, states or ``pinned`` condition exclude
    every memory its action could change).
    """
    return rule_problems(list(enumerate(spec.rules)), spec.budgets)


def rule_problems(rules: list[tuple[int, Rule]], budgets: Budgets | None) -> list[tuple[Loc, str]]:
    """:func:`semantic_problems` over some of a policy's rules, each with its index in the file: the rules that
    parsed when others did not, so one pass reports both. ``budgets`` None (they did not parse) skips the check of
    ``budget_pressure`` names."""
    problems: list[tuple[Loc, str]] = []
    first_use: dict[str, int] = {}
    budget_names = budgets.model_dump(exclude_none=True) if budgets is not None else None
    for index, rule in rules:
        where: Loc = ("rules", index)
        if rule.name in first_use:
            problems.append(((*where, "name"), f"duplicate rule name {rule.name!r} (also rules[{first_use[rule.name]}])"))
        first_use.setdefault(rule.name, index)
        pressure = rule.when.budget_pressure
        if pressure is not None and budget_names is not None and pressure.budget not in budget_names:
            defined = ", ".join(budget_names) or "none"
            problems.append(
                ((*where, "when", "budget_pressure", "budget"),
                 f"budget {pressure.budget!r} is not set in 'budgets' (set: {defined})")
            )
        problems.extend(_dead_rule_problems(rule, where))
    return problems


def flapping_warnings(spec: PolicySpec) -> list[tuple[Loc, str]]:
    """Promote/demote rule pairs of one policy that can move the same memory back and forth with no new traffic.

    A promotion on reads within a window ``W`` and a demotion after ``idle_for: I`` flap when ``I < W``: the reads
    that promoted the memory still count after it is demoted, so the next evaluation promotes it again, and so on
    until they age out of the window. The pair is safe when the demotion waits as long as the window (``idle_for``
    or ``resident_for`` >= ``W``) or the promotion makes a demoted memory wait as long (``resident_for`` >= ``W``).
    A promotion on lifetime reads (no ``within``) never ages out: with any demotion it flaps for ever. Demotions of
    stale caches (``stale: true``) are not counted: what they drop is rebuilt from the current text, once.
    """
    return flap_warnings(list(enumerate(spec.rules)))


def flap_warnings(rules: list[tuple[int, Rule]]) -> list[tuple[Loc, str]]:
    """:func:`flapping_warnings` over some of a policy's rules, each with its index in the file (the rules that
    parsed in a file that has other problems)."""
    warnings: list[tuple[Loc, str]] = []
    promotions = [(i, r) for i, r in rules if r.then.migrate == Kind.ACTIVATION and r.when.reads is not None
                  and r.when.reads.at_least is not None]
    # A demotion of stale caches is not undone by the same reads: the promotion builds a fresh cache.
    demotions = [(i, r) for i, r in rules if r.then.migrate == Kind.PLAINTEXT and not r.when.stale]
    for pi, promote in promotions:
        window = promote.when.reads.within  # type: ignore[union-attr]
        for di, demote in demotions:
            pair = f"rules {promote.name!r} (promote) and {demote.name!r} (demote)"
            if window is None:
                if (promote.when.resident_for or 0) == 0:
                    warnings.append((("rules", pi, "when", "reads"),
                                     f"{pair} flap: lifetime reads never age out, so a demoted memory is promoted "
                                     "again at the next run; give reads a 'within' window"))
                continue
            waits = max(demote.when.idle_for or 0, demote.when.resident_for or 0, promote.when.resident_for or 0)
            if waits < window:
                warnings.append((("rules", di, "when"),
                                 f"{pair} can flap: the reads that promote a memory count for {format_duration(window)}, "
                                 f"but it is demoted after {format_duration(waits) if waits else 'no wait'}, then "
                                 f"promoted again by the same reads; set resident_for: {format_duration(window)} on "
                                 f"{demote.name!r} (or idle_for >= the window)"))
    return warnings


def _dead_rule_problems(rule: Rule, where: Loc) -> list[tuple[Loc, str]]:
    then, when = rule.then, rule.when
    action = then.action
    if then.migrate == Kind.PARAMETRIC:
        return [((*where, "then", "migrate"), "migrate cannot make parametric memories; use 'distill' to train an adapter")]
    problems: list[tuple[Loc, str]] = []
    if when.kind is not None and not then.kinds & set(when.kind):
        wanted = " or ".join(sorted(then.kinds))
        problems.append(
            ((*where, "when", "kind"),
             f"{_describe(then)} acts on {wanted} memories; this rule's kind ({', '.join(when.kind)}) never matches")
        )
    if not then.states & set(when.states):
        problems.append(
            ((*where, "when", "state"),
             f"{action} acts on {' or '.join(sorted(then.states))} memories, never on {', '.join(when.states)} ones")
        )
    if when.pinned and then.spares_pinned:
        problems.append(((*where, "when", "pinned"), f"pinned memories are never {then.verb}: this rule can never act"))
    if when.pinned and then.pin:
        problems.append(((*where, "when", "pinned"), "pin acts on unpinned memories; this rule selects pinned ones"))
    return problems


def _describe(then: Then) -> str:
    return f"migrate to {then.migrate}" if then.migrate is not None else then.action
