"""Every ```python and ```bash block of README.md, run as written.

The blocks under one heading form one session, run in order in a fresh copy of the
checkout: shell blocks with bash (what one exports, the next sees: it is one terminal),
Python blocks as scripts in a fresh interpreter with that terminal's environment. Two
comments right before a fence change how its block runs, and nothing else does:

- ``<!-- not run: installs packages -->`` or ``<!-- not run: runs the test suite -->``:
  skipped (checked to be only that);
- ``<!-- runs in the background: … -->``: a server, started before the blocks after it in
  its session, which talk to it; it must answer ``/health`` and still be up at the end.

The README's port 8000 (``127.0.0.1:8000``, ``--port 8000``) becomes a free one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
NOT_RUN = re.compile(r"<!-- not run: (?P<reason>[^>]*?) -->")
BACKGROUND = re.compile(r"<!-- runs in the background: [^>]*? -->")
FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")
BLOCK_SECONDS = 120


@dataclass
class Block:
    lang: str
    code: str
    line: int  # of the opening fence, 1-based
    not_run: str | None = None
    background: bool = False


@dataclass
class Session:
    heading: str
    blocks: list[Block] = field(default_factory=list)


def readme_sessions(text: str) -> list[Session]:
    sessions = [Session("(top)")]
    lines = text.splitlines()
    marker = ""
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = FENCE.match(line)
        if fence:
            end = index + 1
            while not lines[end].startswith("```"):
                end += 1
            if fence["lang"] in ("python", "bash"):
                not_run = NOT_RUN.fullmatch(marker.strip())
                sessions[-1].blocks.append(
                    Block(
                        fence["lang"],
                        "\n".join(lines[index + 1 : end]) + "\n",
                        index + 1,
                        not_run=not_run["reason"] if not_run else None,
                        background=bool(BACKGROUND.fullmatch(marker.strip())),
                    )
                )
            index = end + 1
            marker = ""
            continue
        if line.startswith("#"):
            sessions.append(Session(line.lstrip("#").strip()))
        if line.strip():
            marker = line
        index += 1
    return [s for s in sessions if s.blocks]


SESSIONS = readme_sessions(README.read_text(encoding="utf-8"))


def test_the_readme_has_the_blocks_this_test_expects() -> None:
    blocks = [b for s in SESSIONS for b in s.blocks]
    assert len([b for b in blocks if b.not_run is None]) >= 10
    assert [s.heading for s in SESSIONS if any(b.background for b in s.blocks)] == [
        "Quickstart",
        "Try it",
        "Running in production",
    ]


def test_blocks_not_run_are_only_installs_and_the_test_suite() -> None:
    for block in (b for s in SESSIONS for b in s.blocks if b.not_run is not None):
        where = f"README.md:{block.line}"
        lines = [line for line in block.code.splitlines() if line.strip()]
        if block.not_run == "installs packages":
            assert all("pip install" in line for line in lines), where
        elif block.not_run == "runs the test suite":
            assert all(
                "pytest" in line or line.startswith("export LLMROUTER_TEST_") for line in lines
            ), where
        else:
            pytest.fail(f"{where}: unknown reason not to run a block: {block.not_run!r}")


def fresh_checkout(target: Path) -> None:
    """The checkout's files (tracked, or new and not ignored) as a clone would have them,
    with the checkout's virtual environment linked in as `.venv`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (raw.decode() for raw in listed)):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)


class Terminal:
    """One shell session in ``cwd``: each block's exported environment carries over."""

    def __init__(self, cwd: Path, port: int) -> None:
        self.cwd = cwd
        self.port = port
        venv_bin = str(Path(sys.executable).parent)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMROUTER_", "PYTEST"))}
        env.update(
            PATH=venv_bin + os.pathsep + env.get("PATH", ""),
            VIRTUAL_ENV=sys.prefix,
            PYTHONPATH=str(cwd),  # the copy's package, for scripts and the CLI alike
            PYTHONDONTWRITEBYTECODE="1",
        )
        self.env = env
        self.servers: list[tuple[Block, subprocess.Popen[bytes], Path]] = []
        self._count = 0

    def localise(self, code: str) -> str:
        return code.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}").replace(
            "--port 8000", f"--port {self.port}"
        )

    def run(self, block: Block) -> str:
        self._count += 1
        code = self.localise(block.code)
        if block.background:
            self._start(block, code)
            return ""
        if block.lang == "python":
            script = self.cwd / f".readme_block_{self._count}.py"
            script.write_text(code, encoding="utf-8")
            command = [sys.executable, script.name]
        else:
            state = self.cwd / f".readme_env_{self._count}"
            script = self.cwd / f".readme_block_{self._count}.sh"
            script.write_text(f"set -e -o pipefail\n{code}\nenv -0 > {state.name}\n")
            command = ["bash", script.name]
        done = subprocess.run(
            command,
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=BLOCK_SECONDS,
        )
        if done.returncode != 0:
            pytest.fail(
                f"README.md:{block.line}: the {block.lang} block exited {done.returncode}\n"
                f"--- block\n{code}--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
                + self._server_logs()
            )
        if block.lang == "bash":
            pairs = (item.partition("=") for item in state.read_text().split("\0") if item)
            self.env = {name: value for name, _, value in pairs}
        return done.stdout

    def _start(self, block: Block, code: str) -> None:
        log = self.cwd / f".readme_server_{self._count}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["bash", "-c", code],
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.servers.append((block, process, log))
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return
            except (requests.ConnectionError, requests.Timeout):  # gunicorn: still booting
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"README.md:{block.line}: the server did not come up" + self._server_logs()
                    )
                time.sleep(0.1)

    def _server_logs(self) -> str:
        return "".join(
            f"\n--- server (README.md:{b.line})\n{log.read_text(errors='replace')}"
            for b, _, log in self.servers
        )

    def stop_servers(self) -> list[str]:
        """Stop every server; the ones that had died before are named."""
        died = []
        for block, process, _ in self.servers:
            if process.poll() is not None:
                died.append(f"README.md:{block.line}: the server exited {process.returncode}")
                continue
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return died


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    fresh_checkout(checkout)
    session = Terminal(checkout, free_port())
    yield session
    session.stop_servers()


RUNNABLE = [s for s in SESSIONS if any(b.not_run is None for b in s.blocks)]


@pytest.mark.parametrize(
    "session", RUNNABLE, ids=[re.sub(r"\W+", "-", s.heading).strip("-") for s in RUNNABLE]
)
def test_readme_section_runs(session: Session, terminal: Terminal) -> None:
    outputs = [terminal.run(b) for b in session.blocks if b.not_run is None]
    died = terminal.stop_servers()
    assert died == [], "\n".join(died) + terminal._server_logs()
    check = CHECKS.get(session.heading)
    if check is not None:
        check("\n".join(outputs))


def _quickstart(output: str) -> None:
    assert "secret: sk-llmr-" in output  # keys create printed one
    assert '"id":"echo#echo"' in output.replace(" ", "")  # /v1/models
    assert "data: [DONE]" in output  # the curl stream
    assert "['echo#echo']" in output  # the SDK's model list
    assert output.rstrip().endswith("Hello!")  # the SDK's stream


def _in_process(output: str) -> None:
    assert "'object': 'chat.completion'" in output
    assert output.rstrip().endswith("one two three")


CHECKS = {
    "Quickstart": _quickstart,
    "In process: `router.chat()`": _in_process,
    "Inside an existing Flask app": lambda output: assert_line(output, "echo#echo"),
    "Running in production": lambda output: assert_line(output, '"status":"healthy"'),
}


def assert_line(output: str, expected: str) -> None:
    assert expected in output.replace(" ", ""), output


def test_the_runner_carries_a_terminal_and_catches_a_failing_block(tmp_path: Path) -> None:
    text = (
        "## One\n\n```bash\nexport GREETING=hi\n```\n\n"
        "```python\nimport os\nprint(os.environ['GREETING'], 'from 127.0.0.1:8000')\n```\n\n"
        "<!-- not run: installs packages -->\n```bash\npip install nothing\n```\n\n"
        "## Two\n\n```bash\nfalse\necho unreachable\n```\n"
    )
    one, two = readme_sessions(text)
    assert [b.not_run for b in one.blocks] == [None, None, "installs packages"]
    session = Terminal(tmp_path, port=12345)
    session.run(one.blocks[0])
    assert session.run(one.blocks[1]) == "hi from 127.0.0.1:12345\n"
    with pytest.raises(pytest.fail.Exception, match="exited 1"):
        session.run(two.blocks[0])
