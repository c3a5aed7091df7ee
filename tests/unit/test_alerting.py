"""Alert rules and dashboards name only metrics memos exports, every alert is unit-tested by promtool (run when
promtool is installed: Debian's `prometheus` package has it), and the budget and policy gauges read the kernel."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fakes import FakeModelPort

from memos.hosting import metrics
from memos.schedulers.loader import load_policy

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "dashboard"
RULES, RULE_TESTS = DASHBOARD / "memos-alerts.yml", DASHBOARD / "memos-alerts.test.yml"
METRIC = re.compile(r"\bray_(memos_[a-z_]+)")


def exported() -> set[str]:
    """The metric names memos.hosting.metrics documents (and so exports), with histogram series names."""
    names = set()
    for row in re.findall(r"^\| (memos_[a-z_ /]+?) \|", metrics.__doc__ or "", re.M):
        for name in row.split(" / "):
            names |= {name.strip(), *(f"{name.strip()}_{s}" for s in ("bucket", "sum", "count"))}
    return names


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_every_alert_is_actionable_and_names_exported_metrics():
    known = exported()
    assert {"memos_kernel_heartbeat_timestamp_seconds", "memos_budget_used", "memos_policy_info"} <= known
    for rule in alerts():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        unknown = set(METRIC.findall(rule["expr"])) - known
        assert not unknown, f"{rule['alert']} names metrics memos does not export: {unknown}"


def test_the_grafana_dashboard_names_exported_metrics():
    dashboard = json.loads((DASHBOARD / "memos-grafana.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert not {m for e in exprs for m in METRIC.findall(e)} - exported()
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Promotions vs demotions", "Activation bytes against the budget", "Distillation loss",
            "Syscall latency p95 by op"} <= titles


def test_every_alert_has_a_promtool_case_that_fires_it():
    fired = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert fired == {rule["alert"] for rule in alerts()}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt install prometheus)")
def test_promtool_checks_and_unit_tests_the_rules():
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run(["promtool", "test", "rules", RULE_TESTS.name], cwd=DASHBOARD, capture_output=True,
                            text=True, timeout=120)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


@pytest.fixture
def model_port():
    return FakeModelPort(payload_bytes=700)


def test_budget_rows_count_activation_payloads_per_kernel_and_per_policy(tmp_path, mem, kernel):
    policy_file = tmp_path / "team.yaml"
    policy_file.write_text("name: team\napplies_to: {cubes: ['team/*']}\nbudgets: {activation_bytes: 1KiB}\n"
                           "schedule: {every: 5m}\nrules:\n  - name: r\n    when: {kind: plaintext}\n    then: archive\n")
    policy = load_policy(policy_file)
    mem.create_cube("team/a")
    mem.create_cube("other/b")
    for cube in ("team/a", "other/b"):
        mem.migrate(mem.write(cube, f"a fact in {cube}").id, "activation")
    rows = {(scope, budget): (limit, used) for scope, budget, limit, used in metrics.budget_rows(kernel, [policy])}
    assert rows[("kernel", "activation_disk_bytes")] == (kernel.budgets.disk_bytes, 1400.0)
    assert rows[("kernel", "activation_memories")] == (None, 2.0)
    assert rows[("policy:team", "activation_bytes")] == (1024.0, 700.0)  # only the cubes it governs
    demoted = mem.list("other/b")[0]
    mem.migrate(demoted.id, "plaintext")  # its cache is kept for a rollback: still on disk, still counted
    rows = {(scope, budget): (limit, used) for scope, budget, limit, used in metrics.budget_rows(kernel, [policy])}
    assert rows[("kernel", "activation_disk_bytes")] == (kernel.budgets.disk_bytes, 1400.0)
    assert rows[("kernel", "activation_memories")] == (None, 1.0)
    ((name, source, digest, interval),) = metrics.policy_rows([policy])
    assert (name, source, interval) == ("team", str(policy_file), 300.0) and len(digest) == 16
    policy_file.write_text(policy_file.read_text() + "# edited\n")
    assert metrics.policy_rows([policy])[0][2] != digest  # the hash follows the file on disk
