"""The operator console, mounted at ``/ui``: server-rendered pages and plain forms; one small static
script (``static/console.js``) refreshes the approvals and handoffs lists, and every page works
without it.

    app.mount(UI_PATH, create_console(interlock))

Pages: the approvals inbox and one-page decision packages, runs and their timelines, each
workflow's operating model with its figures and kill switch, and the agents. Operators sign in with
their API token (or a one-time link printed by ``interlock serve``); see :mod:`.session`.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from interlock._internal import permissions as access
from interlock._internal.http_status import status_for
from interlock._internal.service import Interlock
from interlock._internal.ui import approval_pages, ops_pages, signin
from interlock._internal.ui.admin_pages import agents_page, workflow_page, workflows_list
from interlock._internal.ui.approval_pages import (
    AGE_CHOICES,
    STATE_CHOICES,
    TRAITS,
    approval_page,
    inbox,
    live,
    with_unmasked,
)
from interlock._internal.ui.console import (
    STATIC,
    Console,
    ConsoleDep,
    IdPath,
    SecurityHeaders,
    Short,
    SignedDep,
    SignedIn,
    Text,
    WatchingDep,
    base,
    get_console,
    see_other,
)
from interlock._internal.ui.run_pages import PAGE_SIZE, RUN_STATES, runs_list, timeline
from interlock._internal.ui.signin import LOCAL_ADMIN, console_of, ensure_local_admin, login_page, sign_in_url
from interlock._internal.ui.system_pages import executive_page, systems_page
from interlock.exceptions import (
    ArgumentsInvalid,
    AuthenticationError,
    ConflictError,
    InterlockError,
    NotFound,
    PermissionDenied,
)

router = APIRouter()


# ---- approvals ----------------------------------------------------------------------------------


@router.get("/approvals")
def approvals_inbox(
    request: Request,
    console: ConsoleDep,
    signed: SignedDep,
    workflow: Short = "",
    age: Short = "",
    risk: Short = "",
    state: Short = "pending",
    agent: Short = "",
    tool: Short = "",
    q: Short = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    names = access.visible_workflows(console.interlock, signed.operator)
    ages = {key: seconds for key, _, seconds in AGE_CHOICES}
    filters = {
        "workflow": workflow if workflow in names else "",
        "age": age if age in ages else "",
        "risk": risk if risk in TRAITS else "",
        "state": state if state in STATE_CHOICES else "pending",
        "agent": agent.strip(),
        "tool": tool.strip(),
        "q": q.strip(),
    }
    items, total = inbox(
        console.interlock,
        signed.operator,
        workflow=filters["workflow"] or None,
        state=filters["state"],
        older_than_s=ages[filters["age"]],
        risk=filters["risk"] or None,
        agent=filters["agent"],
        tool=filters["tool"],
        text=filters["q"],
        page=page,
    )
    pages = max(1, -(-total // approval_pages.PAGE_SIZE))
    query = "&".join(f"{k}={quote(v)}" for k, v in filters.items() if v)
    return console.render(
        request,
        "inbox.html",
        signed=signed,
        nav="approvals",
        items=items,
        filters=filters,
        workflows=names,
        ages=AGE_CHOICES,
        traits=TRAITS,
        states=STATE_CHOICES,
        total=total,
        page=min(page, pages),
        pages=pages,
        query=query,
        live=live(console.interlock, signed.operator),
        refresh_ms=console.refresh_ms,
    )


@router.get("/live")
def live_counts(console: ConsoleDep, signed: WatchingDep) -> JSONResponse:
    """What the inbox pages poll (see static/console.js); polling does not keep a session alive."""
    return JSONResponse(live(console.interlock, signed.operator))


@router.get("/approvals/{approval_id}")
def approval(request: Request, console: ConsoleDep, signed: SignedDep, approval_id: IdPath) -> Response:
    page = approval_page(console.interlock, signed.operator, approval_id)
    return console.render(
        request, "approval.html", signed=signed, nav="approvals", a=page, error="", comment=""
    )


@router.post("/approvals/{approval_id}")
def decide(
    request: Request,
    console: ConsoleDep,
    signed: SignedDep,
    approval_id: IdPath,
    csrf: Text = "",
    decision: Text = "",
    comment: Text = "",
) -> Response:
    console.check_csrf(signed, csrf)
    page = approval_page(console.interlock, signed.operator, approval_id)
    comment = comment.strip()
    error, status_code = "", 200
    if decision not in ("approve", "reject"):
        error, status_code = "Choose Approve or Reject.", 422
    elif decision == "reject" and not comment:
        error, status_code = "Say why you reject it: the agent and the audit log get your reason.", 422
    else:
        try:
            console.interlock.approvals.decide(
                approval_id,
                operator=signed.operator,
                approve=decision == "approve",
                comment=comment or None,
                via="console",
            )
        except (ConflictError, PermissionDenied, ArgumentsInvalid) as exc:
            error, status_code = exc.message, status_for(exc)
        else:
            return see_other(f"{base(request)}/approvals/{quote(approval_id)}")
        page = approval_page(console.interlock, signed.operator, approval_id)
    return console.render(
        request,
        "approval.html",
        signed=signed,
        nav="approvals",
        a=page,
        error=error,
        comment=comment,
        status_code=status_code,
    )


@router.post("/approvals/{approval_id}/unmask")
def unmask(
    request: Request, console: ConsoleDep, signed: SignedDep, approval_id: IdPath, csrf: Text = ""
) -> Response:
    """The approval page with its values unmasked, for an entitled operator; the service audits it."""
    console.check_csrf(signed, csrf)
    page = approval_page(console.interlock, signed.operator, approval_id)  # NotFound if not theirs
    exact = console.interlock.approvals.unmask(approval_id, operator=signed.operator, via="console")
    return console.render(
        request,
        "approval.html",
        signed=signed,
        nav="approvals",
        a=with_unmasked(page, exact),
        error="",
        comment="",
    )


# ---- runs ---------------------------------------------------------------------------------------


@router.get("/systems")
def systems(request: Request, console: ConsoleDep, signed: SignedDep) -> Response:
    page = systems_page(console.interlock, signed.operator)
    return console.render(request, "systems.html", signed=signed, nav="systems", **page)


@router.get("/executive")
def executive(request: Request, console: ConsoleDep, signed: SignedDep, week_ending: Short = "") -> Response:
    try:
        day = date.fromisoformat(week_ending) if week_ending else None
    except ValueError:
        raise ArgumentsInvalid("week_ending: expected YYYY-MM-DD", field="week_ending") from None
    page = executive_page(console.interlock, signed.operator, week_ending=day)
    return console.render(request, "executive.html", signed=signed, nav="executive", **page)


@router.get("/runs")
def runs(
    request: Request,
    console: ConsoleDep,
    signed: SignedDep,
    workflow: Short = "",
    agent: Short = "",
    tool: Short = "",
    state: Short = "",
    q: Short = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    names = access.visible_workflows(console.interlock, signed.operator)
    chosen = workflow if workflow in names else ""
    filters = {"workflow": chosen, "agent": agent.strip(), "tool": tool.strip(), "q": q.strip()}
    filters["state"] = state if state in RUN_STATES else ""
    items, total = runs_list(
        console.interlock,
        signed.operator,
        workflow=chosen or None,
        agent=filters["agent"],
        tool=filters["tool"],
        state=filters["state"],
        text=filters["q"],
        page=page,
    )
    pages = max(1, -(-total // PAGE_SIZE))
    query = "&".join(f"{k}={quote(v)}" for k, v in filters.items() if v)
    return console.render(
        request,
        "runs.html",
        signed=signed,
        nav="runs",
        items=items,
        workflows=names,
        workflow=chosen,
        filters=filters,
        states=RUN_STATES,
        total=total,
        page=min(page, pages),
        pages=pages,
        query=query,
    )


@router.get("/runs/{run_id}")
def run(request: Request, console: ConsoleDep, signed: SignedDep, run_id: IdPath) -> Response:
    page = timeline(console.interlock, signed.operator, run_id)
    return console.render(request, "run.html", signed=signed, nav="runs", r=page)


# ---- workflows ----------------------------------------------------------------------------------


@router.get("/workflows")
def workflows(request: Request, console: ConsoleDep, signed: SignedDep) -> Response:
    items = workflows_list(console.interlock, signed.operator)
    return console.render(request, "workflows.html", signed=signed, nav="workflows", items=items)


def _workflow_response(
    request: Request,
    console: Console,
    signed: SignedIn,
    name: str,
    *,
    error: str = "",
    status_code: int = 200,
) -> Response:
    page = workflow_page(console.interlock, signed.operator, name)
    return console.render(
        request, "workflow.html", signed=signed, nav="workflows", w=page, error=error, status_code=status_code
    )


@router.get("/workflows/{name}")
def workflow(request: Request, console: ConsoleDep, signed: SignedDep, name: IdPath) -> Response:
    return _workflow_response(request, console, signed, name)


def _switch(
    request: Request, console: Console, signed: SignedIn, name: str, csrf: str, reason: str, *, paused: bool
) -> Response:
    console.check_csrf(signed, csrf)
    runtime = access.runtime_for(console.interlock, signed.operator, name)
    access.require(
        access.may_pause_workflow(signed.operator, runtime), signed.operator, f"pause or resume {name}"
    )
    reason = reason.strip()
    if paused and not reason:
        return _workflow_response(
            request,
            console,
            signed,
            name,
            error="Give a reason for pausing; it goes in the audit log.",
            status_code=422,
        )
    console.interlock.set_paused(
        name, paused=paused, actor=f"operator:{signed.operator.id}", reason=reason or None
    )
    return see_other(f"{base(request)}/workflows/{quote(name)}")


@router.post("/workflows/{name}/pause")
def pause(
    request: Request, console: ConsoleDep, signed: SignedDep, name: IdPath, csrf: Text = "", reason: Text = ""
) -> Response:
    return _switch(request, console, signed, name, csrf, reason, paused=True)


@router.post("/workflows/{name}/resume")
def resume(
    request: Request, console: ConsoleDep, signed: SignedDep, name: IdPath, csrf: Text = "", reason: Text = ""
) -> Response:
    return _switch(request, console, signed, name, csrf, reason, paused=False)


# ---- agents -------------------------------------------------------------------------------------


@router.get("/agents")
def agents(request: Request, console: ConsoleDep, signed: SignedDep) -> Response:
    items = agents_page(console.interlock, signed.operator)
    return console.render(request, "agents.html", signed=signed, nav="agents", items=items)


@router.post("/agents/{agent_id}/revoke")
def revoke(
    request: Request,
    console: ConsoleDep,
    signed: SignedDep,
    agent_id: IdPath,
    csrf: Text = "",
    reason: Text = "",
) -> Response:
    console.check_csrf(signed, csrf)
    try:
        record = console.interlock.agents.get(agent_id)
    except NotFound:
        record = None
    if record is None or not access.may_view(signed.operator, record.workflow):
        raise NotFound(f"no agent {agent_id!r}", code="unknown_agent")
    access.require(
        access.may_admin_agents(signed.operator, record.workflow), signed.operator, "revoke agents"
    )
    console.interlock.agents.revoke(
        agent_id, actor=f"operator:{signed.operator.id}", reason=reason.strip() or None
    )
    return see_other(base(request) + "/agents")


# ---- the app ------------------------------------------------------------------------------------


def _error_page(request: Request, status_code: int, title: str, message: str) -> Response:
    console = get_console(request)
    try:
        signed: SignedIn | None = console.signed_in(request)
    except InterlockError:
        signed = None
    return console.render(
        request, "error.html", signed=signed, status_code=status_code, title=title, message=message
    )


_TITLES = {
    401: "Please sign in",
    403: "Not allowed",
    404: "Not found",
    409: "Already decided",
    422: "Not understood",
}


def _on_interlock_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InterlockError)
    if isinstance(exc, AuthenticationError):
        if request.method in ("GET", "HEAD"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return see_other(f"{base(request)}/login?next={quote(target, safe='')}")
        return login_page(
            request,
            get_console(request),
            error="Your session ended. Sign in again, then repeat what you did.",
            status_code=401,
        )
    status_code = status_for(exc)
    message = exc.message if status_code < 500 else "The server could not do this; its log has the details."
    return _error_page(request, status_code, _TITLES.get(status_code, "Something went wrong"), message)


def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = "There is no such page in the console." if exc.status_code == 404 else str(exc.detail)
    return _error_page(request, exc.status_code, _TITLES.get(exc.status_code, "Error"), message)


def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
    return _error_page(request, 422, _TITLES[422], f"{where}: {first.get('msg', 'invalid')}")


def create_console(interlock: Interlock) -> FastAPI:
    """The console as an ASGI app to mount (it has no lifespan of its own; the parent app's runs)."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.console = Console(interlock)
    app.add_exception_handler(InterlockError, _on_interlock_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(signin.router)
    app.include_router(router)
    app.include_router(ops_pages.router)
    return app


# Re-exported: ``interlock serve`` and the tests reach the sign-in link through this module.
__all__ = ["LOCAL_ADMIN", "console_of", "create_console", "ensure_local_admin", "router", "sign_in_url"]
