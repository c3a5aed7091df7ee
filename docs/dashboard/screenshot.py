"""Screenshot of the Ray dashboard's actor view with the memos actors (docs/operations.md shows it).

Needs Debian's chromium (`apt-get install chromium`). Starts `memos up` on a temporary data dir (127.0.0.1 only,
Ray token auth off for this throw-away cluster so the headless browser needs no login), writes a few memories,
takes the screenshot with headless Chromium, and stops the cluster it started:

    .venv/bin/python docs/dashboard/screenshot.py [--out docs/dashboard/ray-actors.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DASHBOARD_PORT, METRICS_PORT = 28565, 28566


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("ray-actors.png")))
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    if not Path(args.chromium).exists():
        print("chromium not found: apt-get install chromium", file=sys.stderr)
        return 2
    os.environ["RAY_AUTH_MODE"] = "disabled"
    from memos.client import Memos
    from memos.config import Settings
    from memos.hosting import ray_host

    home = Path(tempfile.mkdtemp(prefix="memos-screenshot-"))
    cache = Path(os.environ.get("MEMOS_MODEL_CACHE") or Path.home() / ".memos" / "models")
    if cache.is_dir():  # reuse the converted model if the user has one
        (home / "models").symlink_to(cache, target_is_directory=True)
    settings = Settings(home=home, dashboard_port=DASHBOARD_PORT, metrics_export_port=METRICS_PORT)
    info = ray_host.up(settings)
    try:
        host = ray_host.connect(settings)
        mem = Memos(host.transport, "agent:demo")
        mem.create_cube("team/demo")
        for text in ("The launch is on Friday.", "The demo room is B-204.", "Coffee is on the third floor."):
            mem.write("team/demo", text)
        mem.search("when is the launch?", "team/demo")
        mem.assemble_context("when is the launch?", "team/demo")  # returns once the model actor is up
        url = f"{info['dashboard_url']}/#/actors"
        profile = tempfile.mkdtemp(prefix="chromium-")
        subprocess.run(
            [
                args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--window-size=1600,900", "--virtual-time-budget=15000",
                f"--screenshot={args.out}", url,
            ],
            check=True, capture_output=True, timeout=120,
        )
        print(f"wrote {args.out} from {url}")
    finally:
        ray_host.down(settings)
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
