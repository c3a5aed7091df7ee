"""Typed kernel events (memos.kernel.events): what the outbox stores is what the type says, and back."""

from __future__ import annotations

import dataclasses

import pytest

from memos.client import Memos
from memos.errors import PermissionDenied
from memos.kernel import events as ev
from memos.service import KernelService
from memos.transports import InProcessTransport


class Recorder:
    def __init__(self) -> None:
        self.events: list[ev.KernelEvent] = []

    def syscall(self, op, outcome, duration_s):
        pass

    def event(self, event):
        self.events.append(event)

    def policy_run(self, policy, duration_s, outcomes):
        pass


def test_every_type_round_trips_through_its_record():
    samples = {"cube": "team/x", "memory_id": "m_1", "principal": "agent:a"}
    for name, cls in ev.TYPES.items():
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in samples:
                values[f.name] = samples[f.name]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                values[f.name] = {"int": 3, "str": "x", "bool": True, "float": 0.5}.get(
                    str(f.type).split(" ")[0], ["m_2"])
        event = cls(**values)
        assert event.type == name
        back = ev.from_record(name, event.cube, event.memory_id, event.principal, event.data())
        assert back == event, name


def test_an_unknown_type_is_kept_as_it_was_stored():
    other = ev.from_record("from_a_newer_version", "c", None, "p", {"a": 1})
    assert isinstance(other, ev.OtherEvent) and ev.type_of(other) == "from_a_newer_version"
    assert other.data() == {"a": 1}


def test_optional_fields_are_left_out_of_the_record():
    assert ev.Evicted(cube="c", tier="ram", reason="model host RAM budget").data() == {
        "tier": "ram", "reason": "model host RAM budget"}
    assert ev.Migrated(cube="c", frm="plaintext", to="activation", rule=None, version=2).data() == {
        "frm": "plaintext", "to": "activation", "rule": None, "version": 2}


def test_what_a_session_emits_is_stored_and_delivered_as_typed_events(kernel):
    recorder = Recorder()
    kernel.observers.append(recorder)
    mem = Memos(InProcessTransport(KernelService(kernel)), "agent:a")
    mem.create_cube("team/x")
    first = mem.write("team/x", "the deploy runs at noon")
    second = mem.write("team/x", "it runs in eu-west", derived_from=[(first.id, first.version)])
    mem.update(first.id, content="the deploy runs at one")
    mem.pin(second.id)
    mem.archive(second.id)
    mem.restore(second.id)
    mem.grant("team/x", "agent:b", "read")
    with pytest.raises(PermissionDenied):
        Memos(InProcessTransport(KernelService(kernel)), "agent:c").write("team/x", "not mine")

    stored = Memos(InProcessTransport(KernelService(kernel)), "system").events(limit=100).events
    typed = [ev.from_record(e.type, e.cube, e.memory_id, e.principal, e.data) for e in stored]
    assert not [t for t in typed if isinstance(t, ev.OtherEvent)]
    assert [type(t) for t in typed] == [type(t) for t in recorder.events]
    assert [t.data() for t in typed] == [t.data() for t in recorder.events]
    kinds = [type(t) for t in typed]
    for cls in (ev.CubeCreated, ev.Written, ev.Stale, ev.Updated, ev.Pinned, ev.Archived, ev.Restored, ev.Granted,
                ev.Denied):
        assert cls in kinds, cls
    stale = next(t for t in typed if isinstance(t, ev.Stale))
    assert (stale.memory_id, stale.source, stale.source_version) == (second.id, first.id, 2)
