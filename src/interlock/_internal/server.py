"""The whole server, composed: the HTTP API and MCP gateway with the console mounted at ``/ui``.

    app = create_app(Settings())                 # the app builds, starts and closes its Interlock
    app = create_app(interlock=il)               # embedding: the caller owns ``il``

The faces (``api/``, ``ui/``, ``cli/``) never import one another; this module is where the API and
the console meet, and what ``interlock serve`` runs: in its own process (:func:`serve_one`), or
in ``N`` worker processes sharing one listening socket (:func:`serve_workers`).

With workers, the supervising process does what must happen once (migrate, check the manifests,
print the URLs and the sign-in link, which any worker accepts since it is kept in the database),
then starts the workers and serves nothing itself. Each worker builds its own app from the same
settings, loads the manifests without migrating, and runs housekeeping only while it holds the
housekeeping lease (one process at a time, across workers and replicas). The supervisor restarts
a worker that dies; SIGTERM or SIGINT stops every worker gracefully (requests in flight finish,
lifespans close) and then the supervisor.
"""

from __future__ import annotations

import socket
from functools import partial

from fastapi import FastAPI

from interlock._internal.api.app import API_PREFIX, MCP_PATH, UI_PATH, create_api
from interlock._internal.service import Interlock
from interlock._internal.settings import Settings
from interlock._internal.ui.routes import create_console


def create_app(
    settings: Settings | None = None, *, interlock: Interlock | None = None, migrate: bool = True
) -> FastAPI:
    """Build the HTTP app: REST API, MCP gateway and console.

    Without ``interlock`` the app builds one from ``settings`` and owns it: the lifespan runs
    :meth:`Interlock.start` (migrate unless ``migrate=False``, load ``settings.manifests``) before
    serving and closes it on shutdown. A caller that passes ``interlock`` owns it instead and must
    have started it.
    """
    app = create_api(settings, interlock=interlock, migrate=migrate)
    app.mount(UI_PATH, create_console(app.state.interlock))
    return app


def worker_app(settings: Settings) -> FastAPI:
    """One worker's app (a uvicorn factory): its own Interlock, on a database already migrated."""
    return create_app(settings, migrate=False)


def serve_one(app: FastAPI, sock: socket.socket, *, log_level: str) -> bool:
    """Serve ``app`` on the bound socket in this process until SIGTERM or SIGINT; False when the
    app failed to start."""
    import uvicorn

    from interlock._internal.api.one_write import OneWriteProtocol

    # The socket object, not its file descriptor: uvicorn takes a bare descriptor for a Unix
    # socket and would skip what it does for TCP.
    config = uvicorn.Config(app, log_level=log_level, proxy_headers=False, http=OneWriteProtocol)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return bool(server.started)


def serve_workers(settings: Settings, sock: socket.socket, *, workers: int, log_level: str) -> None:
    """Serve with ``workers`` processes accepting on the bound socket, supervised by this one.

    Workers are started fresh (spawned, not forked), each with ``settings`` and its own database
    connections; the supervisor restarts one that dies and stops them all on SIGTERM or SIGINT.
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from interlock._internal.api.one_write import OneWriteProtocol

    config = uvicorn.Config(
        partial(worker_app, settings),
        factory=True,
        http=OneWriteProtocol,
        workers=workers,
        log_level=log_level,
        proxy_headers=False,
        # A fresh worker answers the supervisor's pings only once its imports are done, which on
        # a busy machine takes longer than uvicorn's default 5 s; it would be killed and respawned.
        timeout_worker_healthcheck=60,
    )
    Multiprocess(config, sockets=[sock]).run()


__all__ = ["API_PREFIX", "MCP_PATH", "UI_PATH", "create_app", "serve_one", "serve_workers", "worker_app"]
