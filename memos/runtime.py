"""The composition root: decide where the kernel runs and hand out clients.

``Runtime.start(mode=...)``:
- ``"auto"`` (default): attach to the cluster ``memos up`` started if it answers, else start an embedded local Ray;
- ``"ray"``: always start an embedded local Ray (127.0.0.1, with the dashboard) and the kernel actor in it;
- ``"cluster"``: attach to ``memos up``'s cluster or fail;
- ``"inprocess"``: the kernel in this process, no Ray (fast; for scripts and tests).

A runtime with mode ``"http"`` wraps an ``HttpTransport`` to a `memos serve` that owns the data dir (the CLI builds
one when ``$MEMOS_API_KEY`` is set: memos.cli._served).
"""

from __future__ import annotations

from typing import Any, Literal

from memos.client import Memos
from memos.config import Settings
from memos.errors import BackendError
from memos.transports import Transport

Mode = Literal["auto", "ray", "cluster", "inprocess"]


class Runtime:
    def __init__(self, settings: Settings, transport: Transport, *, mode: str, host: Any = None) -> None:
        self.settings = settings
        self.transport = transport
        self.mode = mode
        self._host = host

    @classmethod
    def start(cls, settings: Settings | None = None, *, mode: Mode = "auto", dashboard: bool = True,
              owner: str = "Runtime.start(mode='inprocess')") -> Runtime:
        """A runtime on ``settings`` (default: from the environment). ``owner`` names this process in the data dir's
        lock when the kernel runs in it (``inprocess``), for the error a second opener gets.

        Raises:
            DataDirInUse: ``inprocess``, and another process owns the data dir.
            BackendError: ``cluster``, and no cluster answers.
        """
        settings = settings or Settings.from_env()
        if mode == "inprocess":
            from memos.service import lazy_model, open_transport

            # The model host is loaded by the first call that needs it. A sharded data dir: every shard's kernel here.
            transport = open_transport(settings, model=lazy_model(settings), owner=owner)
            return cls(settings, transport, mode="inprocess")
        from memos.hosting import ray_host

        if mode in ("auto", "cluster") and ray_host.cluster_info(settings) is not None:
            try:
                host = ray_host.connect(settings)
                return cls(settings, host.transport, mode="cluster", host=host)
            except BackendError:
                if mode == "cluster":
                    raise
        elif mode == "cluster":
            raise BackendError("no memos cluster is running; start one with 'memos up'")
        host = ray_host.start_embedded(settings, dashboard=dashboard)
        return cls(settings, host.transport, mode="ray", host=host)

    @property
    def dashboard_url(self) -> str | None:
        return getattr(self._host, "dashboard_url", None)

    @property
    def metrics_url(self) -> str | None:
        return getattr(self._host, "metrics_url", None)

    def policy_admin(self, command: str, arg: str | None = None) -> Any:
        """The policy lifecycle (``list``, ``apply`` FILE, ``reload``, ``pause``/``resume`` RULE) of the kernel's
        scheduler, in whatever process owns the kernel (see ``KernelService.policy_admin``)."""
        return self.transport.policy_admin(command, arg)  # type: ignore[attr-defined]

    def run_policy(self, name: str | None = None) -> list[dict[str, Any]]:
        """Evaluate the kernel's policies (or one) now, as their schedule would; returns the run reports."""
        return self.transport.run_policy(name)  # type: ignore[attr-defined]

    def client(self, principal: str) -> Memos:
        return Memos(self.transport, principal)

    def close(self) -> None:
        if self._host is not None:
            self._host.shutdown()
        else:
            self.transport.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
