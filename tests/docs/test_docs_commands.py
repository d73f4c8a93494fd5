"""Every command and every Python block the documentation shows is run, in a workspace prepared
the way a reader's is.

How the docs are read (rules for whoever writes them)
-----------------------------------------------------
- In a ```` ```console ```` block, a line starting with ``$ `` is a command; a line ending in ``\\``
  continues on the next one. The other lines are the output the reader should see: each one is
  looked for, in order, in what the command printed (whitespace-insensitive, so wrapping does not
  matter; ``…`` matches anything, and a line that is only ``…`` is skipped).
- A command must exit 0, unless it ends with ``# exits N``: then it must exit N.
- A ```` ```console ```` block without any ``$ `` line (the README's style) runs every line as a command.
- A fenced block whose info string carries ``file=PATH`` (```` ```yaml file=cookbook/workflow.yaml ````)
  is written to PATH in the workspace when the reading reaches it: the doc asks the reader to
  save it there, and the commands after it use it.
- ```` ```sh ````, ```` ```shell ```` and ```` ```bash ```` blocks are commands too, one a line (as
  in the README's style), run under ``bash``.
- A ```` ```python ```` block is run as it stands, with the doc's earlier Python blocks already run
  in the same namespace (a reader's one Python session per page, in reading order), in the
  workspace and with its environment. It must not raise. Asynchronous examples call
  ``asyncio.run`` as a reader's script would; a top-level ``await`` or ``async with`` fails here as
  it fails for the reader. While a block runs against the server, a person approves every approval
  the block asks for (through the API, as operator ``alice``), so examples that wait for a decision
  get one.
- A block that cannot run here (it needs a cluster, a registry, a machine-wide install) says so in
  the doc itself, in its info string: ```` ```sh norun="needs a Kubernetes cluster" ````. The reason
  is required, and such blocks stay few (:data:`MAX_NORUN_BLOCKS`).
- ```` ```console-norun ```` blocks are not run. Their commands must be listed in :data:`NOT_RUN`,
  which stays short and explicit; so must any command skipped in a ```` ```console ```` block.

The workspace (one per documentation file, in a temporary directory)
--------------------------------------------------------------------
- a copy of ``examples/`` and a ``.venv`` link to the interpreter's environment, so
  ``. .venv/bin/activate`` works as in a checkout;
- ``INTERLOCK_DATABASE__URL`` → a fresh SQLite file ``interlock.db`` in the workspace, and
  ``SUPPORT_DESK_DB`` → a fresh help desk ``support-desk.db`` next to it; no other ``INTERLOCK_*``
  setting from the machine running the tests, and no ``interlock.toml``;
- ``INTERLOCK_SERVER__PORT`` → a free port, so ``interlock serve`` without ``--port`` never
  collides with anything;
- the support-triage workflow loaded, the agent ``triage-bot`` (secret in ``$CLIENT_SECRET``, an
  access token in ``$TOKEN``), the operators ``alice`` (approver; token in ``$APPROVER_TOKEN``) and
  ``olivia`` (owner and admin; token in ``$OWNER_TOKEN``), and two runs of ``triage-bot``: one on
  ticket T-1010 that refunded 29 USD and completed, and ``RUN_ID`` on ticket T-1016 (read the ticket
  and the customer, drafted a reply, moved the ticket to the billing group, then asked to refund
  89 USD and to e-mail the customer, both waiting for a person).

Placeholders, replaced in every command before it runs (and the ids in the sample output it is
checked against): ``RUN_ID``, ``APPROVAL_ID`` (the 89 USD refund), ``EMAIL_APPROVAL_ID`` (the
e-mail), ``HANDOFF_ID`` (the held 40 USD refund), and ``127.0.0.1:8000`` (the documented default address), which points at a server the
test starts on the workspace's database for the files that call it.

``interlock serve`` without an exit marker is long-running: it is started, must print its URLs and
answer ``/healthz``, and is then stopped.

Plain ``interlock …`` commands (no shell syntax) run in this process through the CLI's own app, in
the workspace and with the same environment, because starting Python sixty times would make this
test slow; anything else runs under ``bash``. ``INTERLOCK_DOCS_SUBPROCESS=1`` runs every command
under ``bash`` instead.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
import pytest

from servers import free_port

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted((REPO / "docs").glob("*.md"))
README = REPO / "README.md"

# Commands shown but never run, each with its reason. Keep this list short.
NOT_RUN = {
    "make run": "sets up a virtualenv and runs the demo: the test suite itself is what `make test` runs",
    "make test": "runs this very test suite",
    "make lint": "a developer task (ruff and mypy over the tree), not a user command",
    "make bench": "a developer task (benchmarks), minutes long",
}
MAX_NOT_RUN = 4
# Blocks marked norun="reason" in the docs (a cluster, a registry, a machine-wide install).
MAX_NORUN_BLOCKS = 4

PLACEHOLDERS = (
    "EMAIL_APPROVAL_ID",
    "APPROVAL_ID",
    "HANDOFF_ID",
    "RUN_ID",
)  # longest first: one contains another
DEFAULT_ADDRESS = "127.0.0.1:8000"
SHELL_SYNTAX = re.compile(r"[$|&;<>()`*?~]")
COMMAND_TIMEOUT_S = 120
# Read now: the workspace clears every INTERLOCK_* variable before the commands run.
ALL_IN_BASH = os.environ.get("INTERLOCK_DOCS_SUBPROCESS") == "1"
# A server with --workers spawns fresh processes that import and load everything: slow on a busy machine.
SERVE_TIMEOUT_S = 180


# ---- reading the docs -------------------------------------------------------------------------


@dataclass
class Command:
    text: str  # as shown, continuation lines joined
    line: int
    expect_exit: int = 0
    output: list[str] = field(default_factory=list)  # the sample output shown under it


@dataclass
class FileBlock:
    path: str
    content: str
    line: int


@dataclass
class PythonBlock:
    source: str
    line: int  # the block's first line of code


@dataclass
class Skipped:
    lang: str
    reason: str
    line: int


@dataclass
class Doc:
    path: Path
    items: list[Command | FileBlock | PythonBlock]  # in reading order
    not_run: list[str]
    skipped: list[Skipped] = field(default_factory=list)  # blocks marked norun="reason"
    shown: list[tuple[str, int, list[str]]] = field(default_factory=list)  # other blocks: lang, line, body


_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*(.*)$")
_EXITS = re.compile(r"\s+#\s*exits\s+(\d+)\s*$")
SHELLS = ("sh", "shell", "bash")
PYTHONS = ("python", "py")


def _info(info: str) -> tuple[str, dict[str, str]]:
    """The block's language and its ``key=value`` attributes (values may be quoted)."""
    try:
        words = shlex.split(info)
    except ValueError:
        words = info.split()
    lang = words[0] if words and "=" not in words[0] else ""
    attrs = dict(w.split("=", 1) for w in words if "=" in w)
    attrs.update({w: "" for w in words[1:] if "=" not in w})
    return lang, attrs


def read_doc(path: Path) -> Doc:
    lines = path.read_text(encoding="utf-8").splitlines()
    items: list[Command | FileBlock | PythonBlock] = []
    not_run: list[str] = []
    skipped: list[Skipped] = []
    shown: list[tuple[str, int, list[str]]] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        marker = fence.group(2)
        lang, attrs = _info(fence.group(3).strip())
        start = i + 1
        j = start
        while j < len(lines) and not lines[j].strip().startswith(marker):
            j += 1
        body = [
            line[len(fence.group(1)) :] if line.startswith(fence.group(1)) else line
            for line in lines[start:j]
        ]
        if "file" in attrs:
            items.append(FileBlock(attrs["file"], "\n".join(body) + "\n", start))
        elif "norun" in attrs:
            skipped.append(Skipped(lang, attrs["norun"].strip(), start))
        elif lang in ("console", "console-norun"):
            commands = _commands(body, start + 1, readme_style=not any(b.startswith("$ ") for b in body))
            if lang == "console":
                items.extend(commands)
            else:
                not_run.extend(c.text for c in commands)
        elif lang in SHELLS:
            items.extend(_commands(body, start + 1, readme_style=True))
        elif lang in PYTHONS:
            items.append(PythonBlock("\n".join(body) + "\n", start + 1))
        else:
            shown.append((lang, start, body))
        i = j + 1
    return Doc(path, items, not_run, skipped, shown)


def _commands(body: list[str], first_line: int, *, readme_style: bool) -> list[Command]:
    out: list[Command] = []
    current: Command | None = None
    continuing = False
    for offset, raw in enumerate(body):
        line = raw.rstrip()
        if continuing and current is not None:
            current.text += "\n" + line
            continuing = line.endswith("\\")
            continue
        if readme_style:
            starts = bool(line.strip()) and not line.lstrip().startswith("#")
        else:
            starts = line.startswith("$ ")
        if starts:
            text = line[2:] if line.startswith("$ ") else line
            current = Command(text=text, line=first_line + offset)
            out.append(current)
            continuing = text.endswith("\\")
        elif current is not None and not readme_style:
            current.output.append(line)
    for command in out:
        found = _EXITS.search(command.text)
        if found:
            command.expect_exit = int(found.group(1))
            command.text = command.text[: found.start()]
    return out


def all_docs() -> list[Doc]:
    return [read_doc(path) for path in [*DOCS, README] if path.is_file()]


# ---- the workspace ------------------------------------------------------------------------------


@dataclass
class Workspace:
    root: Path
    values: dict[str, str]  # placeholder → value
    server: subprocess.Popen[bytes] | None = None
    server_port: int | None = None
    namespace: dict[str, Any] = field(default_factory=lambda: {"__name__": "__docs__"})  # the Python session

    def ids(self, text: str) -> str:
        for name in PLACEHOLDERS:
            text = text.replace(name, self.values[name])
        return text

    def substitute(self, text: str) -> str:
        text = self.ids(text)
        if DEFAULT_ADDRESS in text:
            text = text.replace(DEFAULT_ADDRESS, f"127.0.0.1:{self.ensure_server()}")
        return text

    def ensure_server(self) -> int:
        if self.server_port is None:
            port = free_port()
            self.server = _spawn(
                f"interlock serve --manifest examples/support-triage/workflow.yaml --port {port}", self.root
            )
            _wait_healthy(port, self.server, path="/readyz")
            self.server_port = port
        return self.server_port

    def close(self) -> None:
        if self.server is not None:
            _stop(self.server)


def _spawn(command: str, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["bash", "-c", command],
        cwd=cwd,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, stopped as one
    )


def _stop(process: subprocess.Popen[bytes]) -> bytes:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
    return out or b""


def _wait_healthy(port: int, process: subprocess.Popen[bytes], *, path: str = "/healthz") -> None:
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited early:\n{_stop(process).decode(errors='replace')}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(
        f"no answer on {path} within {SERVE_TIMEOUT_S}s:\n{_stop(process).decode(errors='replace')}"
    )


def prepare(root: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """The reader's starting point: see the module docstring."""
    shutil.copytree(
        REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("__pycache__", "*.db", "*.db-*")
    )
    (root / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    for name in list(os.environ):
        if name.startswith("INTERLOCK_"):
            monkeypatch.delenv(name)
    env = {
        "INTERLOCK_DATABASE__URL": f"sqlite:///{root / 'interlock.db'}",
        "SUPPORT_DESK_DB": str(root / "support-desk.db"),
        "INTERLOCK_SERVER__PORT": str(free_port()),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "COLUMNS": "200",
        "NO_COLOR": "1",
        "TERM": "dumb",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(root)

    from interlock import Interlock, Settings

    values: dict[str, str] = {}
    with Interlock(Settings()) as il:
        il.migrate()
        il.load_workflow(root / "examples" / "support-triage" / "workflow.yaml", actor="cli:docs")
        creds = il.agents.create(
            "triage-bot", workflow="support-triage", environment="production", actor="cli:docs"
        )
        _, approver = il.operators.create("alice", roles=["approver"], workflows=None, actor="cli:docs")
        _, owner = il.operators.create("olivia", roles=["owner", "admin"], workflows=None, actor="cli:docs")
        token = il.issue_token(creds.client_id, creds.client_secret).token

        done = il.start_run(token, trigger={"ticket": "T-1010"})
        for tool, args in (
            ("tickets.get", {"ticket_id": "T-1010"}),
            (
                "payments.refund",
                {"ticket_id": "T-1010", "amount": 29, "currency": "USD", "reason": "accidental upgrade"},
            ),
        ):
            assert il.act(token, done.id, tool, args).status == "executed"
        il.finish_run(token, done.id)

        run = il.start_run(token, trigger={"ticket": "T-1016"})
        steps = (
            ("tickets.get", {"ticket_id": "T-1016"}, None),
            ("customers.get", {"customer_id": "C-1008"}, None),
            (
                "replies.draft",
                {"ticket_id": "T-1016", "body": "Sorry about the charge after you cancelled."},
                None,
            ),
            (
                "tickets.update",
                {"ticket_id": "T-1016", "fields": {"priority": "high", "group": "billing"}},
                None,
            ),
            (
                "payments.refund",
                {
                    "ticket_id": "T-1016",
                    "amount": 89,
                    "currency": "USD",
                    "reason": "charged after cancelling",
                },
                "The customer cancelled on 28 February and was charged on 1 March.",
            ),
            (
                "emails.send",
                {
                    "ticket_id": "T-1016",
                    "to": "customer-1008@example.com",
                    "subject": "Your refund",
                    "body": "We are refunding the 89 USD charged after you cancelled.",
                },
                "Tell the customer the refund is on its way.",
            ),
        )
        for tool, args, reasoning in steps:
            result = il.act(token, run.id, tool, args, reasoning=reasoning, confidence=0.9)
            if tool == "payments.refund":
                values["APPROVAL_ID"] = str(result.approval_id)
            elif tool == "emails.send":
                values["EMAIL_APPROVAL_ID"] = str(result.approval_id)
            else:
                assert result.status == "executed", result
        values["RUN_ID"] = run.id

        held = il.start_run(token, trigger={"ticket": "T-1012"})
        assert il.act(token, held.id, "tickets.get", {"ticket_id": "T-1012"}).status == "executed"
        unsure = il.act(
            token,
            held.id,
            "payments.refund",
            {"ticket_id": "T-1012", "amount": 40, "currency": "USD", "reason": "charged twice"},
            reasoning="Two charges on the same day, but the second may be a pre-authorisation.",
            confidence=0.3,
        )
        assert unsure.status == "escalated", unsure
        [handoff] = il.handoffs.list(run_id=held.id)
        values["HANDOFF_ID"] = handoff.id
    assert values["APPROVAL_ID"].startswith("apr_")
    assert values["EMAIL_APPROVAL_ID"].startswith("apr_")

    for name, value in (
        ("CLIENT_SECRET", creds.client_secret),
        ("TOKEN", token),
        ("APPROVER_TOKEN", approver),
        ("OWNER_TOKEN", owner),
    ):
        monkeypatch.setenv(name, value)
    return Workspace(root, values)


# ---- running one command ------------------------------------------------------------------------


@dataclass
class Outcome:
    exit_code: int
    output: str


_CLI_READY = False


def _cli_app():  # type: ignore[no-untyped-def]
    global _CLI_READY
    from interlock._internal.cli import main as cli_main

    if not _CLI_READY:
        cli_main._register()
        _CLI_READY = True
    return cli_main.app


def run_in_process(argv: list[str]) -> Outcome:
    from typer.testing import CliRunner

    result = CliRunner().invoke(_cli_app(), argv, catch_exceptions=True)
    output = result.output  # stdout and stderr, interleaved as a terminal shows them
    code = result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        output += "".join(traceback.format_exception(result.exception))
        code = code or 1
    return Outcome(code, output)


def run_in_bash(command: str, cwd: Path) -> Outcome:
    proc = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=COMMAND_TIMEOUT_S,
    )
    return Outcome(proc.returncode, proc.stdout.decode(errors="replace"))


def run_serve(command: str, cwd: Path) -> Outcome:
    """Start a long-running ``interlock serve``, wait for its URLs and /healthz, stop it."""
    process = _spawn(command, cwd)
    port_flag = re.search(r"--port[ =](\d+)", command)
    port = int(port_flag.group(1)) if port_flag else int(os.environ["INTERLOCK_SERVER__PORT"])
    try:
        _wait_healthy(port, process)
    finally:
        output = _stop(process).decode(errors="replace")
    for path in ("/v1", "/mcp", "/ui", "/openapi.json"):
        assert f":{port}{path}" in output, f"serve did not print its {path} URL:\n{output}"
    return Outcome(0, output)


class Approver:
    """The person at the console while a Python block runs against the server: approves, through
    the API as ``alice``, every approval the block asks for (the workspace's own stay pending, for
    the commands that decide them)."""

    POLL_S = 0.2

    def __init__(self, ws: Workspace) -> None:
        self.url = f"http://127.0.0.1:{ws.server_port}"
        self.headers = {"Authorization": f"Bearer {os.environ['APPROVER_TOKEN']}"}
        self.keep = {ws.values["APPROVAL_ID"], ws.values["EMAIL_APPROVAL_ID"]}
        self.approved: list[str] = []
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Approver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=10) as http:
            while not self._stop.wait(self.POLL_S):
                try:
                    pending = http.get("/v1/approvals", params={"state": "pending"}).json()
                    for approval in pending:
                        if approval["id"] in self.keep or approval["id"] in self.approved:
                            continue
                        answer = http.post(
                            f"/v1/approvals/{approval['id']}/approve", json={"comment": "checked, go ahead"}
                        )
                        if answer.status_code == 200:
                            self.approved.append(approval["id"])
                        else:
                            self.problems.append(f"{approval['id']}: {answer.status_code} {answer.text}")
                except httpx.HTTPError as exc:
                    self.problems.append(repr(exc))


def run_python(block: PythonBlock, ws: Workspace, where: str) -> Outcome:
    """Run the block in the doc's namespace; its line numbers are the doc's, for tracebacks."""
    source = ws.substitute(block.source)
    # dont_inherit: this module's ``from __future__ import annotations`` is not the reader's.
    code = compile("\n" * (block.line - 1) + source, where.rsplit(":", 1)[0], "exec", dont_inherit=True)
    printed = StringIO()
    approver = Approver(ws) if ws.server_port is not None else None
    try:
        with redirect_stdout(printed), redirect_stderr(printed):
            if approver is None:
                exec(code, ws.namespace)
            else:
                with approver:
                    exec(code, ws.namespace)
    except BaseException:  # SystemExit included: a block must not exit
        return Outcome(1, printed.getvalue() + traceback.format_exc())
    return Outcome(0, printed.getvalue())


_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")


def _program(joined: str) -> list[str]:
    """The words of a command after any leading ``NAME=value`` assignments."""
    words = joined.split()
    while words and _ASSIGNMENT.match(words[0]):
        words = words[1:]
    return words


def run_command(command: Command, ws: Workspace) -> Outcome:
    text = ws.substitute(command.text)
    joined = text.replace("\\\n", " ")
    if _program(joined)[:2] == ["interlock", "serve"] and command.expect_exit == 0:
        return run_serve(joined, ws.root)
    plain = joined.split()[:1] == ["interlock"] and not SHELL_SYNTAX.search(
        joined.replace("'", "").replace('"', "")
    )
    if plain and not ALL_IN_BASH:
        argv = shlex.split(joined, comments=True)
        return run_in_process(argv[1:])
    return run_in_bash(text, ws.root)


def _squash(text: str) -> str:
    return " ".join(text.split())


def check_output(shown: list[str], printed: str) -> str | None:
    """The first shown line not found (in order) in what was printed, or None."""
    haystack = _squash(printed)
    pos = 0
    for line in shown:
        want = _squash(line)
        if not want or want == "…":
            continue
        # Spaces around ``…`` are the doc's typography, not output: "a … b" matches "a b" too.
        pattern = ".*?".join(re.escape(part.strip()) for part in want.split("…"))
        found = re.compile(pattern).search(haystack, pos)
        if found is None:
            return line
        pos = found.end()
    return None


# ---- the tests ----------------------------------------------------------------------------------


def _doc_id(doc: Doc) -> str:
    return str(doc.path.relative_to(REPO))


@pytest.mark.e2e  # starts servers
@pytest.mark.parametrize("doc", all_docs(), ids=_doc_id)
def test_every_command_runs(doc: Doc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert any(
        isinstance(item, PythonBlock) or (isinstance(item, Command) and item.text not in NOT_RUN)
        for item in doc.items
    ), f"{_doc_id(doc)} shows no command this test can run"
    ws = prepare(tmp_path, monkeypatch)
    try:
        for item in doc.items:
            where = f"{_doc_id(doc)}:{item.line}"
            if isinstance(item, FileBlock):
                target = tmp_path / item.path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(item.content, encoding="utf-8")
                continue
            if isinstance(item, PythonBlock):
                outcome = run_python(item, ws, where)
                assert outcome.exit_code == 0, f"{where}: the Python block failed:\n{outcome.output}"
                continue
            if _squash(item.text.split("#", 1)[0]) in NOT_RUN:
                continue
            outcome = run_command(item, ws)
            assert outcome.exit_code == item.expect_exit, (
                f"{where}: `{item.text}` exited {outcome.exit_code}, the doc says {item.expect_exit}:\n"
                f"{outcome.output}"
            )
            missing = check_output([ws.ids(line) for line in item.output], outcome.output)
            assert missing is None, (
                f"{where}: `{item.text}` did not print the line the doc shows:\n  {missing}\n"
                f"it printed:\n{outcome.output}"
            )
    finally:
        ws.close()


def test_docs_have_commands() -> None:
    """The parser finds what the docs show (a guard against a fence change silently skipping all)."""
    docs = {d.path.name: d for d in all_docs()}
    for name in (
        "concepts.md",
        "manifest.md",
        "policy-cookbook.md",
        "approvals.md",
        "deployment.md",
        "security.md",
        "operations.md",
    ):
        assert name in docs, f"docs/{name} is missing"
        assert any(isinstance(i, Command) for i in docs[name].items), f"docs/{name} shows no command"


def test_not_run_list_is_small_and_explicit() -> None:
    assert len(NOT_RUN) <= MAX_NOT_RUN
    shown: list[str] = []
    for doc in all_docs():
        shown += doc.not_run
        shown += [c.text for c in doc.items if isinstance(c, Command)]
    squashed = [_squash(text.split("#", 1)[0]) for text in shown]
    for doc in all_docs():
        for text in doc.not_run:
            assert _squash(text.split("#", 1)[0]) in NOT_RUN, (
                f"{_doc_id(doc)}: `{text}` is in a console-norun block but not listed in NOT_RUN"
            )
    stale = [name for name in NOT_RUN if name not in squashed]
    assert not stale, f"NOT_RUN lists commands no doc shows any more: {stale}"


def test_norun_blocks_are_few_and_say_why() -> None:
    skipped = [(doc, block) for doc in all_docs() for block in doc.skipped]
    for doc, block in skipped:
        assert len(block.reason.split()) >= 3, (
            f'{_doc_id(doc)}:{block.line}: a norun block says why in a few words: norun="needs …"'
        )
    assert len(skipped) <= MAX_NORUN_BLOCKS, [f"{_doc_id(d)}:{b.line}" for d, b in skipped]


_LOOKS_RUNNABLE = re.compile(r"^(\$ |interlock |curl |python3? |import |from \S+ import )")


def test_no_command_or_code_hides_in_a_block_that_is_not_run() -> None:
    """A block the test does not run (yaml, text, an unlabelled fence…) must not be a command or
    Python in disguise: label it ``console``/``sh``/``python``, or mark it norun with the reason."""
    hidden = [
        f"{_doc_id(doc)}:{line} ({lang or 'no language'}): {text.strip()}"
        for doc in all_docs()
        for lang, line, body in doc.shown
        for text in body
        if lang not in ("yaml", "toml", "json", "cedar", "dotenv", "js") and _LOOKS_RUNNABLE.match(text)
    ]
    assert not hidden, "\n".join(hidden)


_INLINE = re.compile(r"`(interlock(?: [^`]*)?)`")


def inline_commands(path: Path) -> list[tuple[int, str]]:
    """``interlock …`` named in the prose (inline code, outside fenced blocks), with its line."""
    found: list[tuple[int, str]] = []
    fence: str | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        opened = _FENCE.match(line)
        if opened:
            if fence is None:
                fence = opened.group(2)
            elif line.strip().startswith(fence):
                fence = None
            continue
        if fence is None:
            found += [(number, m.group(1)) for m in _INLINE.finditer(line)]
    return found


def unknown_in(command: str) -> str | None:
    """What in ``interlock …`` the CLI does not have (a command or an option), or None."""
    import typer

    cmd: Any = typer.main.get_command(_cli_app())  # a group has ``commands`` (typer may bring its own click)
    try:
        words = shlex.split(command)[1:]
    except ValueError:
        words = command.split()[1:]
    for word in words:
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
            if name not in known:
                return f"option {name} of `{cmd.name}`"
        elif hasattr(cmd, "commands") and word not in ("…", "..."):
            sub = cmd.commands.get(word)
            if sub is None:
                return f"command {word!r} under `{cmd.name}`"
            cmd = sub
    return None


def test_commands_named_in_the_prose_exist() -> None:
    """The prose's ``interlock …`` (not run: they stand for a step the reader takes) name commands
    and options the CLI has today."""
    problems = [
        f"{_doc_id(doc)}:{line}: `{text}`: no {missing}"
        for doc in all_docs()
        for line, text in inline_commands(doc.path)
        if (missing := unknown_in(text)) is not None
    ]
    assert not problems, "\n".join(problems)
    assert unknown_in("interlock runs show run_1") == "command 'show' under `runs`"
    assert (
        unknown_in("interlock handoffs resolve hof_1 --action stop --bogus") == "option --bogus of `resolve`"
    )
    assert unknown_in("interlock pause environment production …") is None


def test_python_blocks_are_found() -> None:
    """The integration guide's examples are read as Python (a guard against a fence change)."""
    docs = {d.path.name: d for d in all_docs()}
    blocks = [i for i in docs["integrations.md"].items if isinstance(i, PythonBlock)]
    assert len(blocks) >= 4
    for block in blocks:
        compile(block.source, "integrations.md", "exec")


def test_parser_reads_the_conventions(tmp_path: Path) -> None:
    sample = (
        "```console\n$ interlock check a.yaml \\\n    --json   # exits 1\nallow x\n…\n$ echo hi\nhi\n```\n"
        "```yaml file=dir/x.yaml\nname: x\n```\n```console-norun\nmake test\n```\n"
    )
    path = tmp_path / "sample.md"
    path.write_text(sample, encoding="utf-8")
    doc = read_doc(path)
    first, second, block = doc.items
    assert isinstance(first, Command)
    assert first.expect_exit == 1
    assert first.text == "interlock check a.yaml \\\n    --json"
    assert first.output == ["allow x", "…"]
    assert isinstance(second, Command)
    assert (second.text, second.output) == ("echo hi", ["hi"])
    assert isinstance(block, FileBlock)
    assert (block.path, block.content) == ("dir/x.yaml", "name: x\n")
    assert doc.not_run == ["make test"]
    assert check_output(["allow x", "…", "policy …abc"], "allow   x\nmore\npolicy 12abc") is None
    assert check_output(["deny"], "allow") == "deny"
    assert check_output(["… hof_1 … refund … why …"], "hof_1 refund open why") is None


def test_parser_reads_python_shell_and_norun_blocks(tmp_path: Path) -> None:
    sample = (
        "```python\nx = 1\n```\n```sh\necho a \\\n  b\n# a comment\necho c\n```\n"
        '```sh norun="needs a Kubernetes cluster"\nkubectl apply -k .\n```\n'
        "```yaml\nnot: run\n```\n"
    )
    path = tmp_path / "sample.md"
    path.write_text(sample, encoding="utf-8")
    doc = read_doc(path)
    python, first, second = doc.items
    assert isinstance(python, PythonBlock)
    assert (python.source, python.line) == ("x = 1\n", 2)
    assert isinstance(first, Command)
    assert first.text == "echo a \\\n  b"
    assert isinstance(second, Command)
    assert second.text == "echo c"
    [skipped] = doc.skipped
    assert (skipped.lang, skipped.reason, skipped.line) == ("sh", "needs a Kubernetes cluster", 10)
    assert doc.shown == [("yaml", 13, ["not: run"])]
    assert _LOOKS_RUNNABLE.match("$ interlock pauses")
    assert _LOOKS_RUNNABLE.match("from interlock import Client")
    assert not _LOOKS_RUNNABLE.match("  agent ──intent──▶ authenticate")


def test_a_python_block_runs_in_the_doc_session_with_the_docs_line_numbers(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, dict.fromkeys(PLACEHOLDERS, "unused"))
    assert run_python(PythonBlock("x = 40\n", 3), ws, "doc.md:3").exit_code == 0
    ok = run_python(PythonBlock("print(x + 2)\n", 9), ws, "doc.md:9")
    assert (ok.exit_code, ok.output) == (0, "42\n")
    bad = run_python(PythonBlock("y = 1\nraise ValueError('no')\n", 20), ws, "doc.md:20")
    assert bad.exit_code == 1
    assert 'File "doc.md", line 21' in bad.output
    assert "ValueError: no" in bad.output
