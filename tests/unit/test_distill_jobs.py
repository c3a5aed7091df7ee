"""Distillation jobs (``memos.models.distill_jobs``) with a scripted distill (no model): progress is visible while
a job runs, a finished job has written its adapter, cancel and failure end in readable states, and the running
budget holds."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

import memos.models.distill_jobs as jobs_module
from memos.cubes.parametric import AdapterInfo, AdapterPayload, adapter_info
from memos.errors import CapacityExceeded, InvalidSyscall, NotFound
from memos.models.distill import DistillProgress, DistillResult, SourceFact
from memos.models.distill_jobs import DistillJobs, DistillStatus
from memos.types import Fingerprint

FP = Fingerprint(model_id="tiny@0", config_hash="c" * 64, tokenizer_hash="t" * 64, dtype="float32")
FACTS = [SourceFact(id="m_0123456789abcdef", version=2, text="Mara Quill keeps the brass key in Trumwick.")]


def scripted(release: threading.Event, *, fail: Exception | None = None):
    """A distill that reports 3 steps, waits for ``release`` (or cancel), then succeeds or raises ``fail``."""

    def fake(model, facts, config, *, progress, cancel, lock):
        with lock:  # the job must hand distill the model's lock
            pass
        for step in (1, 2, 3):
            progress(DistillProgress("train", step, 3, 1.0 / step))
        while not release.wait(0.01):
            if cancel.is_set():
                return DistillResult(payload=None, cancelled=True, steps_done=3, loss_curve=(), evaluation=None)
        if fail is not None:
            raise fail
        info = AdapterInfo(fingerprint=FP, sources=tuple(f.ref for f in facts), rank=1, alpha=1.0, modules=("q",))
        payload = AdapterPayload(info=info, weights={"q": (torch.ones(1, 2), torch.ones(2, 1))})
        return DistillResult(payload=payload, cancelled=False, steps_done=3, loss_curve=((1, 1.0),), evaluation=None)

    return fake


def wait_for(jobs: DistillJobs, job_id: str, state: str) -> DistillStatus:
    deadline = time.monotonic() + 10
    while (status := jobs.status(job_id)).state != state:
        assert time.monotonic() < deadline, status
        time.sleep(0.01)
    return status


def test_a_job_reports_progress_then_writes_its_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    monkeypatch.setattr(jobs_module, "distill", scripted(release))
    jobs = DistillJobs(object(), threading.Lock())
    job = jobs.start(FACTS, str(tmp_path / "a.safetensors"))
    assert job.state == "running"
    deadline = time.monotonic() + 10
    while jobs.status(job.job_id).step < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert jobs.status(job.job_id).loss == pytest.approx(1 / 3)
    release.set()
    done = wait_for(jobs, job.job_id, "done")
    assert done.payload is not None and adapter_info(done.payload).sources == (FACTS[0].ref,)
    jobs.forget(job.job_id)
    with pytest.raises(NotFound):
        jobs.status(job.job_id)


def test_a_cancelled_job_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_module, "distill", scripted(threading.Event()))
    jobs = DistillJobs(object(), threading.Lock())
    job = jobs.start(FACTS, str(tmp_path / "a.safetensors"))
    jobs.cancel(job.job_id)
    assert wait_for(jobs, job.job_id, "cancelled").payload is None
    assert not (tmp_path / "a.safetensors").exists()


def test_a_failed_job_keeps_its_typed_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    release.set()
    monkeypatch.setattr(jobs_module, "distill", scripted(release, fail=InvalidSyscall("cannot adapt target modules")))
    jobs = DistillJobs(object(), threading.Lock())
    job = jobs.start(FACTS, str(tmp_path / "a.safetensors"))
    failed = wait_for(jobs, job.job_id, "failed")
    assert failed.error is not None and failed.error["code"] == "invalid" and "target modules" in failed.error["message"]


def test_only_max_running_jobs_at_once_and_no_empty_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    monkeypatch.setattr(jobs_module, "distill", scripted(release))
    jobs = DistillJobs(object(), threading.Lock(), max_running=1)
    first = jobs.start(FACTS, str(tmp_path / "a.safetensors"))
    with pytest.raises(CapacityExceeded, match="at most 1"):
        jobs.start(FACTS, str(tmp_path / "b.safetensors"))
    with pytest.raises(InvalidSyscall, match="at least one memory"):
        jobs.start([], str(tmp_path / "c.safetensors"))
    release.set()
    wait_for(jobs, first.job_id, "done")
    assert jobs.start(FACTS, str(tmp_path / "b.safetensors")).state == "running"
