"""The command line a new user meets: cubes and rights, hints when the default principal is refused, jobs and
policy runs as tables (JSON on request), ``top`` into a file without terminal escapes.

The CLI runs in this process on a temp data dir, with the hashing embedder (no model)."""

from __future__ import annotations

import json
import re

import pytest
from fakes import HashingEmbedder

from memos import cli
from memos.kernel import factory


@pytest.fixture
def memos(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEMOS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEMOS_MODEL", "none")
    monkeypatch.setattr(factory, "open_embedder", lambda settings: HashingEmbedder())

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_cube_create_grant_revoke(memos):
    code, out, _ = memos("cube", "create", "team/research", "--description", "findings")
    assert code == 0 and json.loads(out)["name"] == "team/research"
    assert memos("cube", "create", "team/research")[0] == 2
    assert memos("cube", "create", "team/research", "--exist-ok")[0] == 0
    code, out, _ = memos("cube", "grant", "team/research", "agent:bob", "write")
    assert code == 0 and {"principal": "agent:bob", "right": "write"} in json.loads(out)["grants"]
    assert memos("write", "team/research", "bob was here", "--as", "agent:bob")[0] == 0
    assert memos("cube", "revoke", "team/research", "agent:bob")[0] == 0
    code, _, err = memos("write", "team/research", "again", "--as", "agent:bob")
    assert code == 2 and "denied" in err


def test_the_default_principal_refused_gets_a_hint(memos):
    memos("cube", "create", "agent/alice/notes", "--as", "agent:alice")
    code, out, _ = memos("write", "agent/alice/notes", "secret", "--as", "agent:alice")
    memory_id = json.loads(out)["id"]
    code, _, err = memos("read", memory_id)
    assert code == 2 and "not_found" in err
    assert "hint: commands act as user:cli" in err and "--as system" in err and "memos cube grant" in err
    code, _, err = memos("read", memory_id, "--as", "agent:bob")
    assert code == 2 and "hint" not in err  # a principal chosen on purpose gets the plain error


def test_jobs_are_a_table_and_json_on_request(memos):
    code, out, _ = memos("jobs")
    assert code == 0 and out.startswith("no jobs you may see")
    code, out, _ = memos("jobs", "--json")
    assert code == 0 and json.loads(out) == []


def test_policy_runs_are_a_table_with_local_times(tmp_path, memos, monkeypatch):
    policy = tmp_path / "archive.yaml"
    policy.write_text("name: tidy\napplies_to: {cubes: ['team/*']}\nschedule: {every: 1h}\nrules:\n"
                      "  - name: archive-old\n    when: {kind: plaintext}\n    then: archive\n")
    monkeypatch.setenv("MEMOS_POLICIES", str(policy))
    memos("cube", "create", "team/a", "--as", "system")
    memos("write", "team/a", "an old note", "--as", "system")
    code, out, err = memos("policy", "run")
    assert code == 0, err
    assert "tidy" in out and "policy runs" in out
    assert "archive-old" in out and "ok" in out
    assert not re.search(r"\b\d{9,}\.\d+", out)  # no epoch seconds
    code, out, _ = memos("policy", "run", "--json")
    (report,) = json.loads(out)
    assert report["policy"] == "tidy" and isinstance(report["at"], float)


def test_top_into_a_file_has_no_terminal_escapes(memos, monkeypatch):
    code, out, _ = memos("top", "--once", "--as", "system")
    assert code == 0 and "\x1b" not in out


def test_a_job_row_shows_progress_loss_and_local_times():
    from datetime import UTC, datetime, timedelta

    from rich.console import Console

    from memos.cli.tables import jobs_table
    from memos.types import Job

    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    job = Job(id="j_1", op="distill", principal="agent:alice", cubes=("team/a",), memory_ids=("m_1", "m_2"),
              target="m_9", state="running", phase="train", step=3, total=10, loss=1.23456, started_at=start,
              updated_at=start + timedelta(seconds=90))
    console = Console(record=True, width=200, color_system=None)
    console.print(jobs_table([job]))
    text = console.export_text()
    assert "train 3/10" in text and "1.235" in text and "90.0 s" in text and "m_1, m_2" in text
    assert start.astimezone().strftime("%Y-%m-%d %H:%M:%S") in text
    assert not re.search(r"\b\d{9,}\.\d+", text)


def test_migrate_passes_compression_and_group_to_the_syscall(memos):
    memos("cube", "create", "team/kv")
    memory_id = json.loads(memos("write", "team/kv", "the kettle is blue")[1])["id"]
    code, _, err = memos("migrate", memory_id, "--to", "activation", "--compression", "zip")
    assert code == 2 and "unknown compression part 'zip'" in err
    code, _, err = memos("migrate", memory_id, "--to", "plaintext", "--group", "session")
    assert code == 2 and "apply to migrate(to='activation') only" in err


def test_reevaluate_is_a_command_that_reaches_the_syscall(memos):
    memos("cube", "create", "team/kv")
    memory_id = json.loads(memos("write", "team/kv", "the kettle is blue")[1])["id"]
    code, _, err = memos("reevaluate", memory_id, "--quiet")
    assert code == 2 and "reevaluate needs a model host" in err  # MEMOS_MODEL=none here


def test_policy_list_shows_loaded_policies_and_apply_needs_a_cluster(tmp_path, memos, monkeypatch):
    policy = tmp_path / "tidy.yaml"
    policy.write_text("name: tidy\napplies_to: {cubes: ['team/*']}\nschedule: {every: 1h}\nrules:\n"
                      "  - name: archive-old\n    when: {kind: plaintext}\n    then: archive\n")
    monkeypatch.setenv("MEMOS_POLICIES", str(policy))
    code, out, _ = memos("policy", "list")
    assert code == 0 and "tidy" in out and "every 3600" not in out and "same" in out
    code, out, _ = memos("policy", "list", "--json")
    assert json.loads(out)[0]["differs_from_disk"] is False
    code, _, err = memos("policy", "apply", str(policy))
    assert code == 1 and "none is running" in err
