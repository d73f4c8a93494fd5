"""Every command the documentation shows is run, in a workspace prepared the way a reader's is.

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
e-mail), and ``127.0.0.1:8000`` (the documented default address), which points at a server the
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
import time
from dataclasses import dataclass, field
from pathlib import Path

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

PLACEHOLDERS = ("EMAIL_APPROVAL_ID", "APPROVAL_ID", "RUN_ID")  # longest first: one contains another
DEFAULT_ADDRESS = "127.0.0.1:8000"
SHELL_SYNTAX = re.compile(r"[$|&;<>()`*?~]")
COMMAND_TIMEOUT_S = 120
# Read now: the workspace clears every INTERLOCK_* variable before the commands run.
ALL_IN_BASH = os.environ.get("INTERLOCK_DOCS_SUBPROCESS") == "1"
SERVE_TIMEOUT_S = 30


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
class Doc:
    path: Path
    items: list[Command | FileBlock]  # in reading order
    not_run: list[str]


_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*(.*)$")
_EXITS = re.compile(r"\s+#\s*exits\s+(\d+)\s*$")


def read_doc(path: Path) -> Doc:
    lines = path.read_text(encoding="utf-8").splitlines()
    items: list[Command | FileBlock] = []
    not_run: list[str] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        marker, info = fence.group(2), fence.group(3).strip()
        start = i + 1
        j = start
        while j < len(lines) and not lines[j].strip().startswith(marker):
            j += 1
        body = [
            line[len(fence.group(1)) :] if line.startswith(fence.group(1)) else line
            for line in lines[start:j]
        ]
        words = info.split()
        lang = words[0] if words else ""
        attrs = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        if "file" in attrs:
            items.append(FileBlock(attrs["file"], "\n".join(body) + "\n", start))
        elif lang in ("console", "console-norun"):
            commands = _commands(body, start + 1, readme_style=not any(b.startswith("$ ") for b in body))
            if lang == "console":
                items.extend(commands)
            else:
                not_run.extend(c.text for c in commands)
        i = j + 1
    return Doc(path, items, not_run)


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
        pattern = ".*?".join(re.escape(part) for part in want.split("…"))
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
    assert any(isinstance(item, Command) and item.text not in NOT_RUN for item in doc.items), (
        f"{_doc_id(doc)} shows no command this test can run"
    )
    ws = prepare(tmp_path, monkeypatch)
    try:
        for item in doc.items:
            where = f"{_doc_id(doc)}:{item.line}"
            if isinstance(item, FileBlock):
                target = tmp_path / item.path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(item.content, encoding="utf-8")
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
