# SPDX-License-Identifier: Apache-2.0
"""The README's code works when copied as written.

Every ```python and ```bash block of README.md runs, in order, in one fresh
directory, as a new user would run it: python blocks with the interpreter of
this environment, bash blocks with `bash -e`, its `python` and `shmq` first
on PATH. An HTML comment on the line before a block can change that:

    <!-- readme-test: file NAME -->      the block is the file NAME (written, not run)
    <!-- readme-test: skip: REASON -->   not run (an illustration; the reason is required)

The queues the blocks make live under this test's temporary directory
($XDG_STATE_HOME and $HOME point there) and are removed at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import _unlink, shm_entries

README = Path(__file__).resolve().parent.parent / "README.md"
_MARK = re.compile(r"^<!--\s*readme-test:\s*(?P<kind>[a-z]+)\s*:?\s*(?P<arg>.*?)\s*-->$")
_RUN = ("python", "bash")
_TIMEOUT = 120


@dataclasses.dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    kind: str = "run"  # run, file or skip
    arg: str = ""

    def where(self) -> str:
        return f"README.md:{self.line} ({self.lang} block)"


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of `text`, each with the marker on the line before it (if any)."""
    lines = text.splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = re.match(r"^```(\w*)\s*$", lines[index])
        if not opening:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"README.md:{index + 1}: a code block is never closed")
        block = Block(index + 1, opening.group(1), "\n".join(lines[index + 1:end]) + "\n")
        before = index - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        if before >= 0 and lines[before].startswith("<!--"):
            mark = _MARK.match(lines[before].strip())
            if mark:
                block.kind, block.arg = mark.group("kind"), mark.group("arg")
        found.append(block)
        index = end + 1
    return found


def test_every_marker_is_understood():
    text = README.read_text()
    marked = {number for number, line in enumerate(text.splitlines(), 1) if "readme-test" in line}
    seen = set()
    for block in blocks(text):
        if block.kind == "run":
            continue
        assert block.kind in ("file", "skip"), f"{block.where()}: unknown marker {block.kind!r}"
        assert block.arg, f"{block.where()}: a {block.kind} marker needs a file name or a reason"
        if block.kind == "file":
            assert "/" not in block.arg and block.arg not in (".", ".."), block.where()
        seen.add(block.line)
    # Each marker sits right before a block (a marker elsewhere would silently mark nothing).
    assert len(marked) == len(seen), f"markers not right before a code block: lines {sorted(marked)}"
    runnable = [block for block in blocks(text) if block.lang in _RUN and block.kind == "run"]
    assert len(runnable) >= 3, "the README's examples are not found: has the block syntax changed?"


def _environment(tmp_path: Path) -> dict:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SHMQ_") and key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        HOME=str(tmp_path / "home"),  # nothing of the user's is read or written
        XDG_STATE_HOME=str(tmp_path / "state"),
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        # No supervisor outlives the test (one started for a user's queue waits idle_exit seconds).
        SHMQ_SUPERVISOR_AUTOSTART="0",
        PYTHONFAULTHANDLER="1",  # a crash shows where
    )
    (tmp_path / "home").mkdir()
    return env


def _run(block: Block, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-c", block.code] if block.lang == "python" else ["bash", "-e", "-c", block.code]
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=_TIMEOUT)
    except subprocess.TimeoutExpired:
        out, err = "", f"timed out after {_TIMEOUT} s"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the block left running
        proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_readme_code_blocks_run_as_written(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = _environment(tmp_path)
    ran: dict[int, subprocess.CompletedProcess] = {}
    try:
        for block in blocks(README.read_text()):
            if block.kind == "file":
                if block.lang == "python":
                    compile(block.code, block.arg, "exec")
                (work / block.arg).write_text(block.code)
            elif block.kind == "run" and block.lang in _RUN:
                result = _run(block, work, env)
                assert result.returncode == 0, (
                    f"{block.where()} failed with exit status {result.returncode}:\n{block.code}\n"
                    f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
                ran[block.line] = result
        # The Jobs example for real: a worker process ran the producer's job and it returned "sent".
        (jobs,) = [result for result in ran.values() if "python producer.py" in result.args[-1]]
        assert jobs.stdout.splitlines().count("sent") == 1, jobs.stdout + jobs.stderr
        assert "sending 'welcome' to user 42" in jobs.stdout, jobs.stdout + jobs.stderr
        assert "Traceback" not in jobs.stderr, jobs.stderr
    finally:
        for path in (tmp_path / "state" / "shmq", work / ".shmq", work / "data"):
            for entry in shm_entries(str(path)):
                _unlink(entry)
    assert not (tmp_path / "home" / ".local").exists(), "a README example wrote into the home directory"


@pytest.mark.parametrize("text, expected", [
    ("```python\nx = 1\n```\n", [("python", "run", "")]),
    ("<!-- readme-test: skip: a fragment -->\n\n```bash\nfoo\n```\n", [("bash", "skip", "a fragment")]),
    ("<!-- readme-test: file tasks.py -->\n```python\n```\n```toml\n```\n",
     [("python", "file", "tasks.py"), ("toml", "run", "")]),
])
def test_blocks_reads_fences_and_markers(text, expected):
    assert [(block.lang, block.kind, block.arg) for block in blocks(text)] == expected
