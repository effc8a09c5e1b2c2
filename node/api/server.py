"""Serving the API inside the node's Trio process, on Hypercorn's Trio worker.

:func:`serve_api` is a long-running service in the Trio style: start it with
``await nursery.start(serve_api, app, settings)``; it reports the URLs it
listens on (with the real port when the configured port is 0) through
``task_status.started`` and serves until cancelled or until
``shutdown_trigger`` returns, then closes connections gracefully within
``graceful_timeout_s``. Hypercorn installs no signal handlers here: stopping
the node is the node's business (cancel the scope).

Slow clients (slowloris): a connection that has not sent its request headers
within ``keep_alive_timeout_s`` (Hypercorn's idle timer runs from the accept,
and again after every answer, until headers are complete) is closed, and so
is one that sends nothing at all for ``read_timeout_s``. A body trickled in
slowly is cut by the app's own ``body_timeout_s`` (:mod:`node.api.app`), since
Hypercorn has no whole-body deadline. Headers are bounded in size by h11 (16 KiB).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import hypercorn.config
import hypercorn.trio
import trio

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

    from node.config import Config


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 26657  # 0: any free port (reported through task_status)
    graceful_timeout_s: float = 3.0
    keep_alive_timeout_s: float = 5.0
    read_timeout_s: float = 60.0

    @classmethod
    def from_config(cls, config: Config) -> ServerSettings:
        api = config.api
        return cls(
            host=api.listen.host,
            port=api.listen.port,
            keep_alive_timeout_s=api.keep_alive_timeout_s,
            read_timeout_s=api.read_timeout_s,
        )

    @property
    def bind(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def hypercorn_config(settings: ServerSettings) -> hypercorn.config.Config:
    config = hypercorn.config.Config()
    config.bind = [settings.bind]
    config.graceful_timeout = settings.graceful_timeout_s
    config.keep_alive_timeout = settings.keep_alive_timeout_s
    config.read_timeout = cast(Any, settings.read_timeout_s)  # typed int there; a float works
    config.accesslog = None  # requests are counted in metrics; access logs could leak ids
    config.errorlog = logging.getLogger("hypercorn.error")  # through the node's logging setup
    config.include_server_header = False
    return config


async def serve_api(
    app: Callable[..., Awaitable[None]],
    settings: ServerSettings,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` (an ASGI app) until cancelled; ``task_status`` gets the bound URLs."""
    await hypercorn.trio.serve(
        cast(Any, app),
        hypercorn_config(settings),
        shutdown_trigger=shutdown_trigger,
        task_status=cast(Any, task_status),
    )
