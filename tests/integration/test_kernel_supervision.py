"""A supervised kernel on Ray (issue 13): kill -9 of the kernel actor's process used to leave every client failing
with `kernel actor unreachable` until `memos down` and `memos up`. Now Ray restarts the actor, the restarted actor
re-opens and recovers the data dir (taking its lock), and clients resend reads and writes; writes carry idempotency
keys, so a write whose answer the kill cut off is not written twice."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

SOAK = (
    "import json, sys\n"
    "from memos.bench.actor_soak import run_actor_soak\n"
    "r = run_actor_soak(2, writers=3, kill_every_s=(1.0, 2.0), settle_s=1.0, seed=3)\n"
    "print('RESULT ' + json.dumps(r))\n"
)


def test_sigkill_of_the_kernel_actor_mid_stream_loses_and_duplicates_no_write():
    # Its own process: the soak starts a private Ray, and this test process may be attached to the session's.
    out = subprocess.run([sys.executable, "-c", SOAK], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert len(result["kills"]) == 2 and all(k["new_pid"] != k["old_pid"] for k in result["kills"])
    assert result["acknowledged_writes"] > 0
    assert result["acknowledged_writes_lost"] == 0
    assert result["duplicated"] == 0 and result["acknowledged_twice"] == 0
    assert result["memories_in_cube"] == result["acknowledged_writes"] + result["committed_unacknowledged"]
    assert result["failed_writes"] == {}  # every write was resent until the restarted kernel answered
    assert result["restarted_owner_holds_lock"]
