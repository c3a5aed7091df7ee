"""The policy lifecycle without restarts: list (with file hashes and edits not loaded yet), apply, reload, pause and
resume a rule, and a job someone cancelled that the next run does not start again."""

from __future__ import annotations

import pytest
from fakes import FakeModelPort

from memos.client import Memos
from memos.errors import Cancelled, InvalidSyscall, NotFound, PolicyError
from memos.schedulers.runner import PolicyRunner
from memos.service import KernelService
from memos.transports import InProcessTransport

ARCHIVE = "name: tidy\napplies_to: {cubes: ['team/*']}\nschedule: {every: 1h}\nrules:\n  - name: archive-all\n" \
          "    when: {kind: plaintext}\n    then: archive\n"
PROMOTE = "name: hot\napplies_to: {cubes: ['team/*']}\nschedule: {every: 1h}\nrules:\n  - name: promote\n" \
          "    when: {kind: plaintext}\n    then: {migrate: activation}\n"


@pytest.fixture
def model_port():
    return FakeModelPort()


@pytest.fixture
def service(kernel):
    svc = KernelService(kernel)
    yield svc
    if svc.policies is not None:
        svc.policies.stop()


def test_apply_list_edit_reload(tmp_path, service, mem):
    path = tmp_path / "tidy.yaml"
    path.write_text(ARCHIVE)
    assert service.policy_admin("list") == []
    applied = service.policy_admin("apply", str(path))
    assert applied["name"] == "tidy" and not applied["differs_from_disk"] and service.policies.pending_jobs() == 1
    path.write_text(ARCHIVE.replace("every: 1h", "every: 5m"))
    (listed,) = service.policy_admin("list")
    assert listed["differs_from_disk"] and listed["every_s"] == 3600.0  # the edit is seen, not yet loaded
    (reloaded,) = service.policy_admin("reload")
    assert not reloaded["differs_from_disk"] and reloaded["every_s"] == 300.0
    path.write_text("name: tidy\nrules: []\n")
    with pytest.raises(PolicyError):
        service.policy_admin("reload")
    assert service.policy_admin("list")[0]["every_s"] == 300.0  # a broken file changes nothing
    with pytest.raises(InvalidSyscall):
        service.policy_admin("apply")
    with pytest.raises(InvalidSyscall):
        service.policy_admin("restart")


def test_a_paused_rule_is_not_executed_until_resumed(tmp_path, service, mem):
    path = tmp_path / "tidy.yaml"
    path.write_text(ARCHIVE)
    service.policy_admin("apply", str(path))
    mem.create_cube("team/a")
    m = mem.write("team/a", "a note")
    assert service.policy_admin("pause", "tidy/archive-all") == ["tidy/archive-all"]
    (report,) = service.run_policy("tidy")
    assert [(o["outcome"], "paused" in o["detail"]) for o in report["outcomes"]] == [("not_executed", True)]
    assert mem.read(m.id).state == "active"
    assert service.policy_admin("list")[0]["paused"] == ["tidy/archive-all"]
    service.policy_admin("resume", "tidy/archive-all")
    (report,) = service.run_policy("tidy")
    assert [o["outcome"] for o in report["outcomes"]] == ["ok"] and mem.read(m.id).state == "archived"
    with pytest.raises(NotFound, match="loaded rules: tidy/archive-all"):
        service.policy_admin("pause", "tidy/nope")


def test_a_cancelled_policy_job_stays_cancelled_until_its_memory_changes(tmp_path, kernel, mem):
    path = tmp_path / "hot.yaml"
    path.write_text(PROMOTE)
    cancelled_once = []

    def execute(principal, call):
        if call.op == "migrate" and not cancelled_once:
            cancelled_once.append(call.ids)
            raise Cancelled("job j1 (migrate) was cancelled by user:ops", job_id="j1", by="user:ops")
        return kernel.execute(principal, call)

    runner = PolicyRunner.from_files(execute, [str(path)])
    mem.create_cube("team/a")
    m = mem.write("team/a", "a hot fact")
    first = runner.run_once("hot")
    assert [o.outcome for o in first.outcomes] == ["cancelled"]
    second = runner.run_once("hot")  # the same action is not started again
    assert [(o.outcome, "cancelled by user:ops" in o.detail) for o in second.outcomes] == [("not_executed", True)]
    assert mem.read(m.id).kind == "plaintext"
    mem.update(m.id, content="a hot fact, corrected")  # a new version: a new action
    third = runner.run_once("hot")
    assert [o.outcome for o in third.outcomes] == ["ok"] and mem.read(m.id).kind == "activation"


def test_lifecycle_through_the_in_process_transport(tmp_path, service):
    path = tmp_path / "tidy.yaml"
    path.write_text(ARCHIVE)
    transport = InProcessTransport(service)
    assert transport.policy_admin("apply", str(path))["name"] == "tidy"
    assert [p["name"] for p in transport.policy_admin("list")] == ["tidy"]


def test_a_pause_survives_a_restart_of_the_kernel_and_resume_clears_it(tmp_path, clock, model_port):
    """The kernel actor restarts by reopening its home: a paused rule must still be paused in the new process's
    scheduler (the home's meta table), and ``resume`` must clear it for the next restart too."""
    from fakes import HashingEmbedder

    from memos.kernel import Kernel
    from memos.models.llm_rules import RuleBasedLanguageModel
    from memos.storage.sqlite import SqliteStore
    from memos.storage.vector import InMemoryVectorIndex

    path = tmp_path / "tidy.yaml"
    path.write_text(ARCHIVE)

    def reopen() -> KernelService:
        kernel = Kernel(SqliteStore(tmp_path / "memos.sqlite3", synchronous="NORMAL"), InMemoryVectorIndex(),
                        HashingEmbedder(), clock=clock, model=model_port, llm=RuleBasedLanguageModel())
        return KernelService.with_policies(kernel, [path], start=False)

    first = reopen()
    first.policy_admin("pause", "tidy/archive-all")
    first.close()
    second = reopen()
    try:
        assert second.policy_admin("list")[0]["paused"] == ["tidy/archive-all"]
        Memos(InProcessTransport(second), "system").create_cube("team/a")
        Memos(InProcessTransport(second), "system").write("team/a", "a note")
        (report,) = second.run_policy("tidy")
        assert [o["outcome"] for o in report["outcomes"]] == ["not_executed"]
        assert second.policy_admin("resume", "tidy/archive-all") == []
    finally:
        second.close()
    third = reopen()
    try:
        assert third.policy_admin("list")[0]["paused"] == []
        (report,) = third.run_policy("tidy")
        assert [o["outcome"] for o in report["outcomes"]] == ["ok"]
    finally:
        third.close()


def test_a_restarted_kernel_loads_the_applied_policies_again_and_a_fresh_start_forgets_them(tmp_path, clock,
                                                                                          model_port):
    """What the Ray kernel actor does when Ray restarts it (``restore_applied``) or ``memos up`` starts it
    (``forget_applied``); a file that went bad meanwhile is logged and dropped, the restart goes on."""
    from fakes import HashingEmbedder

    from memos.kernel import Kernel
    from memos.models.llm_rules import RuleBasedLanguageModel
    from memos.storage.sqlite import SqliteStore
    from memos.storage.vector import InMemoryVectorIndex

    tidy, hot = tmp_path / "tidy.yaml", tmp_path / "hot.yaml"
    tidy.write_text(ARCHIVE)
    hot.write_text(PROMOTE)

    def reopen() -> KernelService:
        kernel = Kernel(SqliteStore(tmp_path / "memos.sqlite3", synchronous="NORMAL"), InMemoryVectorIndex(),
                        HashingEmbedder(), clock=clock, model=model_port, llm=RuleBasedLanguageModel())
        return KernelService(kernel)

    first = reopen()
    first.policy_admin("apply", str(tidy))
    first.policy_admin("apply", str(hot))
    first.close()
    second = reopen()
    assert second.policy_admin("list") == [] and sorted(second.restore_applied()) == ["hot", "tidy"]
    assert [p["name"] for p in second.policy_admin("list")] == ["hot", "tidy"]
    second.close()
    hot.write_text("name: hot\nrules: []\n")  # broken while the kernel was down
    third = reopen()
    assert third.restore_applied() == ["tidy"] and third.restore_applied() == []
    third.close()
    fourth = reopen()
    fourth.forget_applied()
    assert fourth.restore_applied() == [] and fourth.policy_admin("list") == []
    fourth.close()
