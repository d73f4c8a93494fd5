"""The whole server, composed: the HTTP API and MCP gateway with the console mounted at ``/ui``.

    app = create_app(Settings())                 # the app builds, starts and closes its Interlock
    app = create_app(interlock=il)               # embedding: the caller owns ``il``

The faces (``api/``, ``ui/``, ``cli/``) never import one another; this module is where the API and
the console meet, and what ``interlock serve`` runs.
"""

from __future__ import annotations

from fastapi import FastAPI

from interlock._internal.api.app import API_PREFIX, MCP_PATH, UI_PATH, create_api
from interlock._internal.service import Interlock
from interlock._internal.settings import Settings
from interlock._internal.ui.routes import create_console


def create_app(settings: Settings | None = None, *, interlock: Interlock | None = None) -> FastAPI:
    """Build the HTTP app: REST API, MCP gateway and console.

    Without ``interlock`` the app builds one from ``settings`` and owns it: the lifespan runs
    :meth:`Interlock.start` (migrate, load ``settings.manifests``) before serving and closes it on
    shutdown. A caller that passes ``interlock`` owns it instead and must have started it.
    """
    app = create_api(settings, interlock=interlock)
    app.mount(UI_PATH, create_console(app.state.interlock))
    return app


__all__ = ["API_PREFIX", "MCP_PATH", "UI_PATH", "create_app"]
