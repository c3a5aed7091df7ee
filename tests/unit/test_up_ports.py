"""`memos up` refuses ports it cannot use in memos' terms (flag and variable to change), and writes a Prometheus
target file at a stable path under the data dir."""

from __future__ import annotations

import json
import socket

import pytest

from memos.cli import main
from memos.config import Settings
from memos.errors import BackendError
from memos.hosting.ray_host import check_ports, prometheus_targets_file, write_prometheus_targets


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_taken_port_names_the_flag_and_the_variable(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with pytest.raises(BackendError, match=rf"dashboard port {taken} .* 'memos up --dashboard-port N' \(or MEMOS_DASHBOARD_PORT=N\)"):
            check_ports(Settings(home=tmp_path, dashboard_port=taken, metrics_export_port=free_port()))
        with pytest.raises(BackendError, match=r"metrics export port .* --metrics-port N"):
            check_ports(Settings(home=tmp_path, dashboard_port=free_port(), metrics_export_port=taken))
    with pytest.raises(BackendError, match="cannot share port"):
        port = free_port()
        check_ports(Settings(home=tmp_path, dashboard_port=port, metrics_export_port=port))
    check_ports(Settings(home=tmp_path, dashboard_port=free_port(), metrics_export_port=free_port()))


def test_a_port_in_rays_worker_range_is_refused(tmp_path):
    with pytest.raises(BackendError, match=r"metrics export port 18081 is in the range Ray keeps for its workers"):
        check_ports(Settings(home=tmp_path, dashboard_port=free_port(), metrics_export_port=18081))


def test_memos_up_reports_a_clash_before_starting_ray(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEMOS_HOME", str(tmp_path / "home"))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        code = main(["up", "--dashboard-port", str(taken), "--metrics-port", str(free_port())])
    assert code == 2
    assert f"the dashboard port {taken} on 127.0.0.1 is taken" in capsys.readouterr().err


def test_the_prometheus_target_file_is_stable_and_follows_the_port(tmp_path):
    first = write_prometheus_targets(Settings(home=tmp_path, metrics_export_port=8081))
    second = write_prometheus_targets(Settings(home=tmp_path, metrics_export_port=9191))
    assert first == second == prometheus_targets_file(Settings(home=tmp_path)) == tmp_path / "prometheus" / "memos-targets.json"
    (group,) = json.loads(second.read_text())
    assert group["targets"] == ["127.0.0.1:9191"] and group["labels"]["job"] == "memos"
