"""The policy engine on hand-built snapshots and a manual clock: retention, rules, guards, budgets, the dry run."""

from __future__ import annotations

import io
import itertools
import math
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memos.clock import ManualClock
from memos.errors import PolicyError
from memos.schedulers import (
    CompiledPolicy,
    CompressIntent,
    DistillIntent,
    KernelSnapshot,
    MigrateIntent,
    compile_policy,
    evaluate,
    explain,
    load_policy,
    main_explain,
    parse_spec,
    plan,
    score,
)
from memos.schedulers.runner import to_syscall
from memos.schedulers.similarity import jaccard, similar_sets, star_groups
from memos.schedulers.spec import Retention
from memos.syscalls import Archive, Delete, Fuse, Pin
from memos.types import Kind, Memory, MemoryRef, PayloadRef, Provenance, State, Trust, from_epoch

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_750_000_000.0
MINUTE, HOUR, DAY = 60.0, 3600.0, 86_400.0
DEFAULT = load_policy(ROOT / "policies" / "default.yaml")
SHIPPED = [load_policy(p) for p in sorted((ROOT / "policies").glob("*.yaml"))]


def memory(
    n: int,
    *,
    at: float = T0,
    cube: str = "team/research",
    kind: Kind = Kind.PLAINTEXT,
    state: State = State.ACTIVE,
    created_ago: float = DAY,
    updated_ago: float | None = None,
    read_ago: float | None = None,
    reads: int = 0,
    pinned: bool = False,
    trust: Trust = Trust.TRUSTED,
    tags: tuple[str, ...] = (),
    content: str | None = None,
    cache_bytes: int = 1000,
    version: int = 1,
    derived_from: tuple[MemoryRef, ...] = (),
) -> Memory:
    """A header as the kernel would report it at ``at``; times are given as "how long ago"."""
    text = content if content is not None else f"memory number {n} about topic {n * 7919 % 1000}"
    payload = PayloadRef(path=f"blobs/{n}.safetensors", sha256="0" * 64, size_bytes=cache_bytes)
    return Memory(
        id=f"m_{n:016x}",
        cube=cube,
        kind=kind,
        version=version,
        state=state,
        pinned=pinned,
        content=text,
        tags=tags,
        provenance=Provenance(author="agent:writer", trust=trust, derived_from=derived_from),
        content_hash="0" * 64,
        created_at=from_epoch(at - created_ago),
        updated_at=from_epoch(at - (updated_ago if updated_ago is not None else created_ago)),
        reads=reads,
        last_read_at=from_epoch(at - read_ago) if read_ago is not None else None,
        size_bytes=len(text.encode()) + (cache_bytes if kind != Kind.PLAINTEXT else 0),
        payload=payload if kind != Kind.PLAINTEXT else None,
    )


def policy(rules: str, *, budgets: str = "{}", retention: str = "{}", cubes: str = '["team/*"]') -> CompiledPolicy:
    text = f"name: test\napplies_to: {{cubes: {cubes}}}\nbudgets: {budgets}\nretention: {retention}\nrules:\n{rules}"
    return compile_policy(parse_spec(text, "test.yaml"), source="test.yaml")


def only(actions: list) -> object:
    assert len(actions) == 1, actions
    return actions[0]


# ---------------------------------------------------------------------------------------------------- retention


PARAMS = Retention(halflife="7d", tag_weights={"important": 4.0, "scratch": 0.5}, untrusted_weight=0.5)


def test_retention_is_one_when_just_used_and_halves_after_a_halflife() -> None:
    assert score(memory(1, created_ago=0), T0, PARAMS).value == 1.0
    assert score(memory(1, created_ago=7 * DAY), T0, PARAMS).value == pytest.approx(0.5)


def test_reads_stretch_the_halflife_logarithmically() -> None:
    read_ten_times = score(memory(1, created_ago=7 * DAY, reads=10), T0, PARAMS)
    assert read_ten_times.halflife_s == pytest.approx(7 * DAY * (1 + math.log(11)))
    assert read_ten_times.value == pytest.approx(2 ** (-1 / (1 + math.log(11))))


def test_the_last_read_resets_the_decay() -> None:
    old_but_just_read = memory(1, created_ago=300 * DAY, read_ago=0.0, reads=1)
    assert score(old_but_just_read, T0, PARAMS).value == 1.0


def test_importance_multiplies_tag_weights_and_the_untrusted_weight() -> None:
    m = memory(1, created_ago=7 * DAY, tags=("important", "scratch", "other"), trust=Trust.UNTRUSTED)
    result = score(m, T0, PARAMS)
    assert result.importance == pytest.approx(4.0 * 0.5 * 0.5)
    assert result.value == pytest.approx(2 ** (-1 / 1.0))


def test_pinned_memories_never_decay() -> None:
    result = score(memory(1, created_ago=10_000 * DAY, pinned=True), T0, PARAMS)
    assert result.value == 1.0
    assert math.isinf(result.halflife_s)


@given(
    reads=st.integers(0, 10_000),
    earlier=st.floats(0, 1000 * DAY),
    later=st.floats(0, 1000 * DAY),
    more_reads=st.integers(0, 100),
)
def test_retention_falls_with_idle_time_and_rises_with_reads(
    reads: int, earlier: float, later: float, more_reads: int
) -> None:
    first, second = sorted((earlier, later))
    m = memory(1, created_ago=0, reads=reads)
    assert 0.0 <= score(m, T0 + second, PARAMS).value <= score(m, T0 + first, PARAMS).value <= 1.0
    read_more = m.model_copy(update={"reads": reads + more_reads})
    assert score(read_more, T0 + second, PARAMS).value >= score(m, T0 + second, PARAMS).value


# ---------------------------------------------------------------------------------------------------- the cases


def test_a_memory_read_5_times_in_an_hour_is_promoted_to_activation() -> None:
    clock = ManualClock(T0)
    read_times = [T0 + i * 10 * MINUTE for i in range(5)]
    clock.advance(45 * MINUTE)
    m = memory(1, at=clock.now(), created_ago=2 * DAY, reads=5, read_ago=5 * MINUTE)
    snapshot = KernelSnapshot([m], read_times={m.id: read_times})
    action = only(evaluate(DEFAULT, snapshot, clock.now()))
    assert action.rule == "promote-hot"
    assert action.policy_rule == "default/promote-hot"
    assert action.syscall == MigrateIntent(m.id, "team/research", Kind.PLAINTEXT, Kind.ACTIVATION, 1)
    assert action.memories == (m.ref,)
    assert "read 5 times in the last 1h (>= 5)" in action.reason


def test_four_reads_in_an_hour_or_five_spread_wider_are_not_promoted() -> None:
    clock = ManualClock(T0 + 45 * MINUTE)
    four = memory(1, at=clock.now(), reads=4)
    snapshot = KernelSnapshot([four], read_times={four.id: [T0 + i * 10 * MINUTE for i in range(4)]})
    assert evaluate(DEFAULT, snapshot, clock.now()) == []
    five = memory(2, at=clock.now(), reads=5)
    snapshot = KernelSnapshot([five], read_times={five.id: [T0 + i * 10 * MINUTE for i in range(5)]})
    clock.advance(HOUR)
    assert evaluate(DEFAULT, snapshot, clock.now()) == []


def test_an_idle_activation_memory_is_demoted_and_a_used_one_is_kept() -> None:
    clock = ManualClock(T0)
    cache = memory(1, kind=Kind.ACTIVATION, created_ago=DAY, read_ago=0.0, reads=9)
    snapshot = KernelSnapshot([cache])
    clock.advance(30 * MINUTE)
    assert evaluate(DEFAULT, snapshot, clock.now()) == []
    clock.advance(31 * MINUTE)
    action = only(evaluate(DEFAULT, snapshot, clock.now()))
    assert action.rule == "demote-idle-activation"
    assert action.syscall == MigrateIntent(cache.id, "team/research", Kind.ACTIVATION, Kind.PLAINTEXT, 1)
    assert "idle for 1h1m (>= 1h)" in action.reason


def test_a_memory_whose_retention_decays_below_the_threshold_is_archived() -> None:
    # default.yaml: halflife 14d, archive below 0.05, i.e. after 14d * log2(20) = 60.5 days unread.
    m = memory(1, created_ago=0)
    clock = ManualClock(T0 + 60 * DAY)
    assert evaluate(DEFAULT, KernelSnapshot([m]), clock.now()) == []
    clock.advance(DAY)
    action = only(evaluate(DEFAULT, KernelSnapshot([m]), clock.now()))
    assert action.rule == "archive-forgotten"
    assert action.syscall == Archive(id=m.id, expected_version=1)
    assert action.reason.startswith("kind plaintext, created 61d ago (>= 30d), retention 0.0")


def test_a_pinned_memory_is_never_archived_however_old() -> None:
    pinned = memory(1, created_ago=0, pinned=True)
    for days in (61, 365, 10_000):
        assert evaluate(DEFAULT, KernelSnapshot([pinned]), T0 + days * DAY) == []


def test_a_pinned_memory_is_spared_even_by_rules_without_retention() -> None:
    rules = """\
  - name: archive-idle
    when: {idle_for: 30d}
    then: archive
"""
    pinned, plain = memory(1, created_ago=90 * DAY, pinned=True), memory(2, created_ago=90 * DAY)
    result = plan(policy(rules), KernelSnapshot([pinned, plain]), T0)
    assert [a.memories for a in result.actions] == [(plain.ref,)]
    (note,) = result.skipped
    assert (note.rule, note.memory, note.reason) == ("archive-idle", pinned.ref, "pinned: never archived")


def test_a_stale_cache_is_dropped_even_when_in_use() -> None:
    cache = memory(1, kind=Kind.ACTIVATION, created_ago=DAY, read_ago=MINUTE, reads=50).model_copy(update={"stale": True})
    action = only(evaluate(DEFAULT, KernelSnapshot([cache]), T0))
    assert (action.rule, action.syscall.to, action.reason) == ("drop-stale-caches", Kind.PLAINTEXT, "kind activation, stale")


def test_a_pinned_cache_is_never_demoted() -> None:
    cache = memory(1, kind=Kind.ACTIVATION, created_ago=DAY, pinned=True)
    assert evaluate(DEFAULT, KernelSnapshot([cache]), T0) == []


# ---------------------------------------------------------------------------------------------------- trust guard


DISTILL = """\
  - name: distill-stable
    when: {unchanged_for: 3d, reads: {at_least: 20}}
    then: {distill: {min_group: 3}}
"""


def stable(n: int, trust: Trust = Trust.TRUSTED) -> Memory:
    return memory(n, created_ago=10 * DAY, reads=30, read_ago=HOUR, trust=trust)


def test_untrusted_memories_are_never_distilled_by_default() -> None:
    members = [stable(1), stable(2), stable(3), stable(4, Trust.UNTRUSTED)]
    result = plan(policy(DISTILL), KernelSnapshot(members), T0)
    action = only(list(result.actions))
    assert isinstance(action.syscall, DistillIntent)
    assert action.syscall.sources == tuple(m.ref for m in members[:3])
    assert action.syscall.into == Kind.PARAMETRIC
    assert [(n.memory, n.reason.split(" (")[0]) for n in result.skipped] == [(members[3].ref, "untrusted: not distilled")]


@pytest.mark.parametrize(
    "rules",
    [DISTILL + "    allow_untrusted: true\n", DISTILL.replace("when: {", "when: {trust: untrusted, ")],
    ids=["allow_untrusted", "trust-untrusted"],
)
def test_a_rule_may_distill_untrusted_memories_when_it_says_so(rules: str) -> None:
    members = [stable(n, Trust.UNTRUSTED) for n in (1, 2, 3)]
    action = only(evaluate(policy(rules), KernelSnapshot(members), T0))
    assert action.syscall.sources == tuple(m.ref for m in members)


def test_untrusted_hot_memories_are_not_promoted() -> None:
    m = memory(1, trust=Trust.UNTRUSTED, reads=10)
    snapshot = KernelSnapshot([m], read_times={m.id: [T0 - i * MINUTE for i in range(10)]})
    result = plan(DEFAULT, snapshot, T0)
    assert result.actions == ()
    assert result.skipped[0].reason.startswith("untrusted: not promoted")


# ---------------------------------------------------------------------------------------------------- semantics


def test_the_first_matching_rule_wins_and_a_memory_gets_one_action() -> None:
    rules = """\
  - name: first
    when: {idle_for: 1d}
    then: archive
  - name: second
    when: {idle_for: 1d}
    then: delete
"""
    m = memory(1, created_ago=3 * DAY)
    assert only(evaluate(policy(rules), KernelSnapshot([m]), T0)).rule == "first"


def test_memories_outside_the_policy_cubes_are_untouched() -> None:
    rules = "  - name: archive-idle\n    when: {idle_for: 1d}\n    then: archive\n"
    inside, nested, outside = (memory(n, cube=c, created_ago=9 * DAY) for n, c in
                               ((1, "team/a"), (2, "team/a/b"), (3, "agent/x")))
    actions = evaluate(policy(rules), KernelSnapshot([inside, nested, outside]), T0)
    assert [a.cube for a in actions] == ["team/a"]


def test_evaluation_is_deterministic_whatever_the_snapshot_order() -> None:
    memories = [
        memory(n, created_ago=(n % 5) * 20 * DAY, reads=n % 7, read_ago=(n % 3) * HOUR if n % 7 else None,
               kind=(Kind.ACTIVATION if n % 4 == 0 else Kind.PLAINTEXT), pinned=n % 11 == 0)
        for n in range(1, 60)
    ]
    read_times = {m.id: [T0 - k * 7 * MINUTE for k in range(m.reads)] for m in memories}
    first = plan(DEFAULT, KernelSnapshot(memories, read_times=read_times), T0)
    again = plan(DEFAULT, KernelSnapshot(memories, read_times=read_times), T0)
    shuffled = list(memories)
    random.Random(7).shuffle(shuffled)
    reordered = plan(DEFAULT, KernelSnapshot(shuffled, read_times=read_times), T0)
    assert first.actions, "the scenario should plan something"
    assert first == again == reordered


def test_archived_memories_are_deleted_a_week_after_archiving() -> None:
    aggressive = load_policy(ROOT / "policies" / "aggressive-forgetting.yaml")
    archived = memory(1, cube="scratch/run-1", state=State.ARCHIVED, created_ago=30 * DAY, updated_ago=8 * DAY,
                      version=2)
    recent = memory(2, cube="scratch/run-1", state=State.ARCHIVED, created_ago=30 * DAY, updated_ago=DAY, version=2)
    action = only(evaluate(aggressive, KernelSnapshot([archived, recent]), T0))
    assert action.syscall == Delete(id=archived.id, expected_version=2)


# ---------------------------------------------------------------------------------------------------- budgets


def test_activation_pressure_demotes_least_retained_caches_until_under_budget() -> None:
    rules = """\
  - name: relieve
    when:
      kind: activation
      budget_pressure: {budget: activation_bytes, above: 0.9}
    then: {migrate: plaintext}
"""
    caches = [memory(n, kind=Kind.ACTIVATION, created_ago=DAY, read_ago=n * MINUTE, reads=3, cache_bytes=400)
              for n in (1, 2, 3)]
    result = plan(policy(rules, budgets="{activation_bytes: 1000B}"), KernelSnapshot(caches), T0)
    action = only(list(result.actions))
    assert action.memories == (caches[2].ref,), "the least recently used cache goes first"
    assert "activation_bytes at 120% of 1000B (> 90%)" in action.reason
    (usage,) = result.budgets
    assert (usage.budget, usage.before, usage.after, usage.limit) == ("activation_bytes", 1200, 800, 1000)


def test_a_promotion_that_would_overrun_the_activation_budget_is_not_planned() -> None:
    rules = "  - name: promote\n    when: {kind: plaintext, reads: {at_least: 1}}\n    then: {migrate: activation}\n"
    hot, warm = memory(1, reads=9), memory(2, reads=2)
    snapshot = KernelSnapshot([hot, warm], activation_estimates={hot.id: 700, warm.id: 700})
    result = plan(policy(rules, budgets="{activation_bytes: 1000B}"), snapshot, T0)
    assert [a.memories for a in result.actions] == [(hot.ref,)], "the most-read memory is promoted first"
    assert result.skipped[0].memory == warm.ref
    assert result.skipped[0].reason.startswith("would overrun activation_bytes")


def test_count_pressure_archives_the_coldest_down_to_the_budget() -> None:
    aggressive = load_policy(ROOT / "policies" / "aggressive-forgetting.yaml")
    cube = "agent/writer/scratch"
    memories = [memory(n, cube=cube, created_ago=DAY, read_ago=n * MINUTE + 11 * MINUTE, reads=1,
                       content=f"distinct note {n} " + "x" * n) for n in range(1, 503)]
    actions = evaluate(aggressive, KernelSnapshot(memories), T0)
    assert [a.rule for a in actions] == ["evict-over-count"] * 2
    assert {a.memories[0] for a in actions} == {memories[-1].ref, memories[-2].ref}


def test_a_rule_limit_caps_the_actions_and_says_so() -> None:
    rules = "  - name: archive-idle\n    when: {idle_for: 1d}\n    then: archive\n    limit: 2\n"
    memories = [memory(n, created_ago=n * DAY + DAY) for n in range(1, 6)]
    result = plan(policy(rules), KernelSnapshot(memories), T0)
    assert [a.memories[0] for a in result.actions] == [memories[4].ref, memories[3].ref]
    assert result.skipped[-1].reason.startswith("limit of 2 actions reached")


# ---------------------------------------------------------------------------------------------------- groups


def test_near_duplicates_are_fused_into_the_most_read_one() -> None:
    rules = "  - name: dedupe\n    when: {kind: plaintext, older_than: 1h}\n    then: {fuse: {similarity: 0.8}}\n"
    text = "the retrieval bench uses the locomo dev split with reciprocal rank fusion of dense and lexical"
    a = memory(1, content=text, reads=9, tags=("bench",))
    b = memory(2, content=text + " search", reads=2, tags=("search",))
    c = memory(3, content="the adapter is trained with peft on the small model", reads=5)
    untrusted_copy = memory(4, content=text, trust=Trust.UNTRUSTED)
    action = only(evaluate(policy(rules), KernelSnapshot([a, b, c, untrusted_copy]), T0))
    assert action.syscall == Fuse(ids=(a.id, b.id), cube="team/research", content=text, tags=("bench", "search"))
    assert action.memories == (a.ref, b.ref)


@settings(max_examples=200, deadline=None)
@given(
    sets=st.lists(st.frozensets(st.sampled_from([f"w{i}" for i in range(12)]), max_size=9), max_size=30),
    threshold=st.sampled_from([0.1, 0.3, 0.5, 0.6, 0.75, 0.8, 0.85, 0.9, 1.0]),
)
def test_the_near_duplicate_join_finds_exactly_the_pairs_brute_force_finds(
    sets: list[frozenset[str]], threshold: float
) -> None:
    distinct = [s for s in dict.fromkeys(sets) if s]
    found = {(min(i, j), max(i, j)) for i, near in enumerate(similar_sets(distinct, threshold)) for j, _ in near}
    expected = {
        (i, j) for i, j in itertools.combinations(range(len(distinct)), 2) if jaccard(distinct[i], distinct[j]) >= threshold
    }
    assert found == expected


def test_fuse_groups_are_stars_around_the_hottest_seed() -> None:
    a, b, c = frozenset("abcdefghij"), frozenset("abcdefghik"), frozenset("abcdefghkl")
    # a~b and b~c are near-duplicates at 0.8, a and c are not: c must not join a's group.
    assert star_groups([a, b, c, a], threshold=0.8, max_group=16) == [[0, 3, 1]]


def test_distillation_forms_balanced_groups_and_skips_what_an_adapter_already_holds() -> None:
    rules = DISTILL.replace("min_group: 3", "min_group: 4, max_group: 8")
    members = [stable(n) for n in range(1, 21)]
    adapter = memory(99, kind=Kind.PARAMETRIC, derived_from=tuple(m.ref for m in members[:2]))
    actions = evaluate(policy(rules), KernelSnapshot([*members, adapter]), T0)
    assert [len(a.syscall.sources) for a in actions] == [6, 6, 6]
    distilled = {ref for a in actions for ref in a.syscall.sources}
    assert distilled == {m.ref for m in members[2:]}


def test_too_small_a_group_is_not_distilled_and_the_dry_run_says_why() -> None:
    result = plan(policy(DISTILL), KernelSnapshot([stable(1), stable(2)]), T0)
    assert result.actions == ()
    assert result.skipped[0].reason == "2 matching memories, fewer than min_group 3"


def test_compress_and_pin_plan_only_what_changes_something() -> None:
    rules = """\
  - name: pin-popular
    when: {reads: {at_least: 50}}
    then: pin
  - name: condense
    when: {size: {at_least: 1KiB}}
    then: {compress: {max_bytes: 512B}}
"""
    popular, already = memory(1, reads=80), memory(2, reads=80, pinned=True)
    long_note = memory(3, content="word " * 400)
    actions = evaluate(policy(rules), KernelSnapshot([popular, already, long_note]), T0)
    assert [a.syscall for a in actions] == [
        Pin(id=popular.id),
        CompressIntent(long_note.id, "team/research", 512, 1),
    ]


# ---------------------------------------------------------------------------------------------------- properties


memories_strategy = st.lists(
    st.builds(
        lambda n, kind, state, age, idle, reads, pinned, trust, tags: memory(
            n, kind=kind, state=state, created_ago=age, read_ago=min(idle, age), reads=reads, pinned=pinned,
            trust=trust, tags=tags, cube="team/research", cache_bytes=50 << 20,
        ),
        n=st.integers(1, 10**6),
        kind=st.sampled_from(list(Kind)),
        state=st.sampled_from([State.ACTIVE, State.ARCHIVED]),
        age=st.floats(0, 400 * DAY),
        idle=st.floats(0, 400 * DAY),
        reads=st.integers(0, 60),
        pinned=st.booleans(),
        trust=st.sampled_from(list(Trust)),
        tags=st.sampled_from([(), ("important",), ("decision",), ("scratch",), ("paper",)]),
    ),
    max_size=40,
    unique_by=lambda m: m.id,
)


@settings(max_examples=60, deadline=None)
@given(memories=memories_strategy, which=st.integers(0, len(SHIPPED) - 1))
def test_shipped_policies_respect_pins_trust_and_one_action_per_memory(memories: list[Memory], which: int) -> None:
    shipped = SHIPPED[which]
    snapshot = KernelSnapshot(memories, read_times={m.id: [T0 - k * MINUTE for k in range(m.reads)] for m in memories})
    actions = evaluate(shipped, snapshot, T0)
    by_id = {m.id: m for m in memories}
    touched = [ref.id for a in actions for ref in a.memories]
    assert len(touched) == len(set(touched)), "a memory got two actions"
    for action in actions:
        call = action.syscall
        for ref in action.memories:
            m = by_id[ref.id]
            if m.pinned:
                assert isinstance(call, Pin | DistillIntent) or (
                    isinstance(call, MigrateIntent) and call.to == Kind.ACTIVATION
                ), f"{action.rule} touched a pinned memory"
            if m.provenance.trust == Trust.UNTRUSTED:
                assert not isinstance(call, DistillIntent), "an untrusted memory was distilled"
                assert not (isinstance(call, MigrateIntent) and call.to == Kind.ACTIVATION), "untrusted promoted"
    assert evaluate(shipped, KernelSnapshot(list(reversed(memories)), read_times=snapshot.read_times), T0) == actions


# ---------------------------------------------------------------------------------------------------- dry run


def test_explain_prints_each_action_with_its_rule_and_reason_and_what_was_spared() -> None:
    hot = memory(1, reads=6)
    idle_cache = memory(2, kind=Kind.ACTIVATION, created_ago=DAY, cache_bytes=64 << 20)
    forgotten = memory(3, created_ago=90 * DAY)
    pinned_cache = memory(4, kind=Kind.ACTIVATION, created_ago=DAY, pinned=True, cache_bytes=64 << 20)
    snapshot = KernelSnapshot(
        [hot, idle_cache, forgotten, pinned_cache], read_times={hot.id: [T0 - k * 5 * MINUTE for k in range(6)]}
    )
    text = explain(DEFAULT, snapshot, T0)
    assert text.splitlines()[0] == f"policy default ({ROOT / 'policies' / 'default.yaml'}) at 2025-06-15T15:06:40+00:00"
    assert "scope: 4 memories in 1 cube (team/research)" in text
    assert "activation_bytes: 128MiB of 256MiB -> 64MiB after the plan" in text
    assert f"[demote-idle-activation] migrate {idle_cache.id} v1 activation -> plaintext in team/research" in text
    assert f"[promote-hot] migrate {hot.id} v1 plaintext -> activation in team/research" in text
    assert "because kind plaintext, read 6 times in the last 1h (>= 5)" in text
    assert f"[archive-forgotten] archive {forgotten.id} v1 in team/research" in text
    assert f"[demote-idle-activation] {pinned_cache.id} (team/research): pinned: never demoted" in text


def test_policy_explain_command_prints_the_dry_run_of_each_file() -> None:
    out, err = io.StringIO(), io.StringIO()
    path = str(ROOT / "policies" / "default.yaml")
    assert main_explain([path], KernelSnapshot([memory(1, created_ago=90 * DAY)]), T0, out=out, err=err) == 0
    assert "[archive-forgotten] archive m_0000000000000001 v1" in out.getvalue()
    broken = str(Path(__file__).parent / "policy_fixtures" / "broken" / "unknown-kind.yaml")
    assert main_explain([broken], KernelSnapshot([]), T0, out=io.StringIO(), err=err) == 1
    assert f"{broken}:5 rules[0].when.kind: unknown kind 'vector'" in err.getvalue()


def test_explain_of_a_quiet_snapshot_says_nothing_would_happen() -> None:
    text = explain(DEFAULT, KernelSnapshot([memory(1)]), T0)
    assert "actions: none" in text


def test_a_snapshot_refuses_the_same_memory_twice() -> None:
    with pytest.raises(ValueError, match="appears twice"):
        KernelSnapshot([memory(1), memory(1)])


def test_a_distill_rule_carries_its_adoption_gate_and_recipes_to_the_syscall() -> None:
    rules = DISTILL.replace(
        "then: {distill: {min_group: 3}}",
        "then: {distill: {min_group: 3, gate: {min_recall: 0.95, max_locality_delta: 0.05},\n"
        "                 recipes: [{dtype: bfloat16}, {dtype: float32, epochs: 20}]}}",
    )
    action = only(evaluate(policy(rules), KernelSnapshot([stable(n) for n in (1, 2, 3)]), T0))
    call = to_syscall(action)
    assert (call.gate.min_recall, call.gate.min_held_out_recall, call.gate.max_locality_delta) == (0.95, 0.6, 0.05)
    assert [r.overrides() for r in call.recipes] == [{"dtype": "bfloat16"}, {"dtype": "float32", "epochs": 20}]
    with pytest.raises(PolicyError, match="learning_rate"):
        policy(DISTILL.replace("{min_group: 3}", "{min_group: 3, recipes: [{learning_rate: 5}]}"))
