"""The Chroma index across process restarts: what another process wrote is seen by a kernel reopened in this one,
and a healthy index needs no repair after a restart."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from memos.config import Settings
from memos.kernel.factory import open_kernel
from memos.models.hashing import HashingEmbedder
from memos.service import KernelService

pytestmark = pytest.mark.integration

OTHER_PROCESS = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from memos.config import Settings
    from memos.kernel.factory import open_kernel
    from memos.models.hashing import HashingEmbedder
    from memos.service import KernelService

    service = KernelService(open_kernel(Settings(home=Path(sys.argv[1]), model=None), embedder=HashingEmbedder()))
    if sys.argv[2] == "write":
        print(json.dumps(service.call("agent:a", {"op": "write", "cube": "team/x", "content": "the ferry leaves at dawn"})))
    else:
        print(json.dumps(service.doctor(repair=True)))
    service.close()
    """
)


def in_another_process(home: Path, what: str) -> dict:
    out = subprocess.run([sys.executable, "-c", OTHER_PROCESS, str(home), what], capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def open_service(home: Path) -> KernelService:
    return KernelService(open_kernel(Settings(home=home, model=None), embedder=HashingEmbedder()))


def test_a_kernel_reopened_in_this_process_sees_what_another_process_wrote(tmp_path):
    home = tmp_path / "home"
    service = open_service(home)
    service.call("agent:a", {"op": "create_cube", "name": "team/x"})
    service.call("agent:a", {"op": "write", "cube": "team/x", "content": "the harbour opens at nine"})
    service.close()
    written = in_another_process(home, "write")["ok"]
    service = open_service(home)
    try:
        answer = service.call("agent:a", {"op": "search", "query": "ferry dawn", "cubes": ["team/x"], "mode": "dense"})
        assert "ok" in answer, answer
        assert written["id"] in {h["memory"]["id"] for h in answer["ok"]["hits"]}
    finally:
        service.close()


def test_a_healthy_index_needs_no_repair_after_a_restart(tmp_path):
    home = tmp_path / "home"
    service = open_service(home)
    service.call("agent:a", {"op": "create_cube", "name": "team/x"})
    for i in range(60):  # the system clock's times have all their float64 digits
        service.call("agent:a", {"op": "write", "cube": "team/x", "content": f"note {i} about the harbour"})
    here = service.doctor(repair=True)["reconcile"]
    service.close()
    after_restart = in_another_process(home, "doctor")["reconcile"]
    for report in (here, after_restart):
        assert (report["added"], report["removed"], report["fixed_metadata"]) == (0, 0, 0)
