# SPDX-License-Identifier: Apache-2.0
"""The security suite: attacker steps run as a second, unprivileged local user.

The tests run as root in CI (.ci/run creates the user shmq-other); as root the
victim is root, so the same tests also check that root refuses what other
users made. A run as a normal user cannot switch users: those tests are then
skipped with the reason, the others (same-uid cases) still run.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys

import pytest

OTHER_USER = "shmq-other"
ATTACKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "attacker.py")


class Attacker:
    """Runs attacker.py steps as `uid` (None: as ourselves), in `cwd`."""

    def __init__(self, uid: int | None, gid: int | None):
        self.uid, self.gid = uid, gid

    def __call__(self, step: str, *args, cwd: str | None = None):
        env = dict(os.environ)
        if self.uid is not None:
            env["SHMQ_ATTACKER_UID"], env["SHMQ_ATTACKER_GID"] = str(self.uid), str(self.gid)
        done = subprocess.run([sys.executable, ATTACKER, step, json.dumps(args)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"attacker step {step} failed:\n{done.stderr}"
        return json.loads(done.stdout)


@pytest.fixture
def other():
    """The other user's (uid, gid, name); skips unless we may become it."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root to run attacker steps as {OTHER_USER} (CI runs the suite as root)")
    try:
        entry = pwd.getpwnam(OTHER_USER)
    except KeyError:
        pytest.fail(f"user {OTHER_USER} is missing: create it with "
                    f"`useradd --system --no-create-home {OTHER_USER}` (.ci/run does)")
    return entry.pw_uid, entry.pw_gid, entry.pw_name


@pytest.fixture
def attacker(other) -> Attacker:
    return Attacker(other[0], other[1])


@pytest.fixture
def same_user() -> Attacker:
    """Attacker steps as ourselves, in a process of their own."""
    return Attacker(None, None)


@pytest.fixture
def public(tmp_path) -> str:
    """A directory every user may write (sticky, as /tmp is), in tmp_path."""
    path = tmp_path / "public"
    path.mkdir()
    os.chmod(path, 0o1777)
    return str(path)


@pytest.fixture
def victim_file(tmp_path):
    """A file of the victim's that nothing may change: (path, its content)."""
    path = tmp_path / "important.txt"
    content = b"the victim's own data\n" * 100
    path.write_bytes(content)
    return str(path), content


@pytest.fixture
def shm_cleanup():
    """Names (in /dev/shm) to remove at teardown, whoever made them."""
    names: list[str] = []
    yield names
    for name in names:
        where = "/dev/shm/" + name.lstrip("/")
        if os.path.isdir(where) and not os.path.islink(where):
            shutil.rmtree(where, ignore_errors=True)
        elif os.path.lexists(where):
            os.unlink(where)
