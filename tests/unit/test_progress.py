"""memos.progress: one redrawn line on a terminal, rate-limited plain lines elsewhere, never failing the work."""

from __future__ import annotations

import io

from memos.progress import Progress, format_duration


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_on_a_terminal_every_update_redraws_the_same_line():
    clock, out = Clock(), Stream(tty=True)
    with Progress("index", total=4, stream=out, clock=clock) as bar:
        for done in range(1, 4):
            clock.t += 10
            bar.update(done, note=f"batch {done}")
        clock.t += 10
        bar.update(4)
    text = out.getvalue()
    frames = text.split("\r")
    assert len(frames) == 5 and text.endswith("\n") and text.count("\n") == 1  # 4 redraws, then the final line
    assert all(f.startswith("\x1b[2K") for f in frames)  # each clears what a longer line left
    assert "index  [######..................] 1/4 (25%)  10s  ~30s left  batch 1" in frames[0]
    assert "2/4 (50%)  20s  ~20s left  batch 2" in frames[1]
    assert frames[-1].rstrip("\n").endswith("4/4 (100%)  40s  batch 3")  # done: no estimate, the note stays


def test_off_a_terminal_it_prints_plain_lines_at_most_every_period_and_at_the_end():
    clock, out = Clock(), Stream(tty=False)
    bar = Progress("soak", total=100, stream=out, every_s=10.0, clock=clock)
    for done in range(1, 31):  # 30 updates, one per second
        clock.t += 1
        bar.update(done)
    bar.close(note="finished")
    bar.close(note="twice")  # closing again draws nothing
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert [line.split("  ")[1].split("] ")[1] for line in lines] == [
        "1/100 (1%)", "11/100 (11%)", "21/100 (21%)", "30/100 (30%)"]
    assert lines[-1].endswith("finished")


def test_a_new_phase_is_printed_at_once_and_the_total_may_change():
    clock, out = Clock(), Stream(tty=False)
    bar = Progress("index: embedding", stream=out, every_s=60.0, clock=clock)
    bar.update(0, 500)
    bar.update(256)  # within the period: not printed
    bar.update(0, 80, label="index: checking")
    bar.update(80)  # within the period: not printed, but the final line shows it
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["index: embedding", "index: checking", "index: checking"]
    assert "0/500" in lines[0] and "0/80" in lines[1] and "80/80" in lines[2]


def test_without_a_total_it_counts():
    clock, out = Clock(), Stream(tty=False)
    with Progress("scan", stream=out, clock=clock) as bar:
        clock.t += 75
        bar.update(12)
    assert out.getvalue().splitlines() == ["scan  12  1m15s"]  # the end said nothing new: not printed twice


def test_a_broken_stream_does_not_fail_the_work():
    class Closed(Stream):
        def write(self, text):
            raise ValueError("I/O operation on closed file")

    bar = Progress("x", total=2, stream=Closed(tty=True), clock=Clock())
    bar.update(1)
    bar.close()


def test_durations_read_naturally():
    assert [format_duration(s) for s in (0, 59.4, 60, 3599, 3600, 90061)] == ["0s", "59s", "1m00s", "59m59s",
                                                                              "1h00m", "25h01m"]
