"""``memos report``: the kernel records what the charts need (migrations, samples of the activation tier and syscall
p95, distillations with their loss curves) and the report turns those events into the plotted series, then PNGs
and a page. The model host is the scripted FakeModelPort; times come from the manual clock, so every point is known."""

from __future__ import annotations

import pytest
from fakes import FakeModelPort

from memos.cli import main
from memos.cli.report import (
    activation_series,
    bucket_for,
    loss_curves,
    migration_rates,
    p95_series,
    read_recorded,
    write_report,
)
from memos.clock import ManualClock
from memos.config import Settings
from memos.kernel.events import LOSS_POINTS, thin_curve
from memos.kernel.samples import Sampler

PNG = b"\x89PNG\r\n\x1a\n"
T0 = 1_750_000_000.0  # the manual clock's start; T0 % 600 == 400


@pytest.fixture
def model_port() -> FakeModelPort:
    return FakeModelPort()


def history(mem, kernel, clock) -> dict:
    """Migrations at T0, T0+120, T0+700 and T0+1300, samples after the first two and the last, a distillation."""
    system, sampler = mem.as_principal("system"), Sampler()
    mem.create_cube("team/a")
    a, b, c, d, e = (mem.write("team/a", f"note {n} about the deploy key").id for n in "abcde")
    mem.migrate(a, "activation")
    clock.advance(120)
    mem.migrate(b, "activation")
    clock.advance(60)
    first = sampler.record(kernel)
    assert sampler.record(kernel) is None  # nothing changed: nothing recorded
    clock.advance(520)  # T0 + 700
    mem.migrate(a, "plaintext")
    clock.advance(600)  # T0 + 1300
    mem.migrate(c, "activation")
    mem.migrate(b, "plaintext")
    mem.distill([d, e], "team/a")
    clock.advance(60)
    last = sampler.record(kernel)
    return {"system": system, "first": first, "last": last, "ids": (a, b, c)}


def test_the_recorded_events_become_the_plotted_series(mem, kernel, clock):
    h = history(mem, kernel, clock)
    recorded = read_recorded(h["system"])
    start = T0 - 400
    assert migration_rates(recorded, bucket_s=600) == [(start, 2, 0), (start + 600, 0, 1), (start + 1200, 1, 1)]
    assert bucket_for(T0, T0 + 1300) == 60 and len(migration_rates(recorded)) == 23  # 60 s buckets from T0 - 40
    a, b, _ = h["ids"]
    sizes = {m.id: m.payload.size_bytes for m in (mem.history(a)[1], mem.history(b)[1])}
    first, last = h["first"], h["last"]
    assert first.activation_bytes == sum(sizes.values()) > 0 and first.activation_limit == kernel.budgets.disk_bytes
    assert activation_series(recorded) == [
        (T0 + 180, first.activation_bytes, kernel.budgets.disk_bytes),
        (T0 + 1360, last.activation_bytes, kernel.budgets.disk_bytes),
    ]
    p95 = p95_series(recorded)
    assert p95["migrate"] == [(T0 + 180, first.p95_ms["migrate"]), (T0 + 1360, last.p95_ms["migrate"])]
    assert last.syscalls["migrate"] == 5 and last.syscalls["write"] == 5
    (label, curve), = loss_curves(recorded)
    assert curve == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))] and " v1" in label
    assert read_recorded(h["system"], since_at=T0 + 1000)[0].at == T0 + 1300  # --since drops the older events


def test_report_writes_four_pngs_and_a_page(mem, kernel, clock, tmp_path):
    recorded = read_recorded(history(mem, kernel, clock)["system"])
    charts = write_report(recorded, tmp_path / "out", since_text="7d")
    assert [c.file for c in charts] == ["migrations.png", "activation.png", "distill_loss.png", "syscall_p95.png"]
    assert [c.points for c in charts][:3] == [23, 2, 1] and charts[0].note == "3 promotions, 2 demotions"
    for chart in charts:
        assert (tmp_path / "out" / chart.file).read_bytes().startswith(PNG)
    page = (tmp_path / "out" / "index.html").read_text()
    assert all(f'src="{c.file}"' in page for c in charts) and "the last 7d" in page
    empty = write_report([], tmp_path / "empty")  # nothing recorded yet: the charts say so, nothing fails
    assert [c.points for c in empty] == [0, 0, 0, 0] and (tmp_path / "empty" / "activation.png").exists()


def test_memos_report_on_a_data_dir(tmp_path, monkeypatch, capsys):
    """The command on a home a kernel wrote (its own process, then closed), as an operator runs it."""
    from memos.client import Memos
    from memos.kernel.factory import open_kernel
    from memos.service import KernelService
    from memos.transports import InProcessTransport

    home, clock = tmp_path / "home", ManualClock(T0)
    kernel = open_kernel(Settings(home=home, model=None, embedder="hashing"), clock=clock, model=FakeModelPort(),
                         owner="test")
    kernel.job_poll_s = 0.01
    service = KernelService(kernel)
    history(Memos(InProcessTransport(service), "agent:alice"), kernel, clock)
    service.close()
    monkeypatch.setenv("MEMOS_EMBEDDER", "hashing")
    monkeypatch.setenv("MEMOS_MODEL", "none")
    assert main(["--home", str(home), "report", "--out", str(tmp_path / "charts")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'charts' / 'migrations.png'}: 23 point(s); 3 promotions, 2 demotions" in out
    assert f"{tmp_path / 'charts' / 'distill_loss.png'}: 1 point(s); 1 distillation(s)" in out
    assert (tmp_path / "charts" / "syscall_p95.png").read_bytes().startswith(PNG)
    with pytest.raises(SystemExit):  # argparse: a bad duration is a usage error, not a traceback
        main(["--home", str(home), "report", "--out", str(tmp_path / "x"), "--since", "1 hour"])


def test_a_long_loss_curve_is_thinned_for_its_event():
    curve = [(step, 1.0 / step) for step in range(1, 1001)]
    thinned = thin_curve(curve)
    assert len(thinned) == LOSS_POINTS and thinned[0] == [1.0, 1.0] and thinned[-1] == [1000.0, 0.001]
    assert thin_curve(curve[:5]) == [[float(s), v] for s, v in curve[:5]]
