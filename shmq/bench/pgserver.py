# SPDX-License-Identifier: Apache-2.0
"""A PostgreSQL server of our own: initdb and pg_ctl in a temporary
directory, on a free loopback port with its unix socket in that directory,
removed by destroy() (and at exit, and by a watchdog if this process dies
without doing it). The tests of the postgres backend (tests/pg_server.py)
and ``shmq bench --only cluster`` start theirs with it.

PostgreSQL refuses to run as root: as root (CI), the server runs as the
unprivileged system user ``shmq-other`` that .ci/run creates, and its
directory belongs to that user.

    server = PostgresServer(); dsn = server.dsn(); server.restart(); server.destroy()
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid

__all__ = ["PostgresServer", "bindir", "free_port", "INSTALL_POSTGRES", "SERVER_USER", "SUPERUSER", "PASSWORD"]

INSTALL_POSTGRES = "apt-get install postgresql"
SERVER_USER = "shmq-other"  # as root; .ci/run creates it
SUPERUSER = "shmq_test"
PASSWORD = "shmq-test-password"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bindir() -> str | None:
    """The directory of initdb and pg_ctl: pg_config's, else the newest /usr/lib/postgresql/*/bin."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            found = ""
        if found and os.path.exists(os.path.join(found, "initdb")):
            return found
    candidates = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.path.exists(os.path.join(d, "initdb"))]
    candidates.sort(key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0)
    if candidates:
        return candidates[-1]
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class PostgresServer:
    """A server of our own: ``dsn(**overrides)``, ``stop()``, ``restart(mode)``,
    ``start()``; ``port``, ``directory``."""

    def __init__(self, extra_conf: str = ""):
        self.bin = bindir()
        if self.bin is None:
            raise RuntimeError(f"PostgreSQL is not installed: {INSTALL_POSTGRES}")
        self.user = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise RuntimeError(
                    f"running as root, and PostgreSQL refuses root: create the unprivileged user {SERVER_USER!r} "
                    f"(useradd --system --no-create-home {SERVER_USER}, as .ci/run does)") from None
        self.directory = tempfile.mkdtemp(prefix="shmq-pg-")
        self.data = os.path.join(self.directory, "data")
        self.log = os.path.join(self.directory, "server.log")
        self.port = free_port()
        self.running = False
        self.watchdog = None
        if self.user is not None:
            os.chown(self.directory, self.user.pw_uid, self.user.pw_gid)
        atexit.register(self.destroy)
        try:
            pwfile = os.path.join(self.directory, "pw")
            with open(pwfile, "w") as f:
                f.write(PASSWORD + "\n")
            if self.user is not None:
                os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
            # Trust on the unix socket (ours, in our directory), a password over TCP:
            # the tests of a wrong password need one.
            self._run("initdb", "-D", self.data, "-U", SUPERUSER, "--pwfile", pwfile, "--auth-local=trust",
                      "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
            os.unlink(pwfile)
            with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
                # A test server: no fsync (the OS keeps what a killed server wrote), small and quick.
                conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                           f"unix_socket_directories = '{self.directory}'\nfsync = off\nfull_page_writes = off\n"
                           "shared_buffers = 16MB\nmax_connections = 100\nlogging_collector = off\n" + extra_conf)
            self.start()
            self._watch()
        except BaseException:
            self.destroy()
            raise

    def _watch(self) -> None:
        """A watchdog that stops the server and removes its directory if this
        process dies without doing it (kill -9 of pytest, a crashed xdist worker)."""
        quote = shlex.quote
        script = (f"while [ -d /proc/{os.getpid()} ]; do sleep 1; done; "
                  f"{quote(os.path.join(self.bin, 'pg_ctl'))} -D {quote(self.data)} -m immediate stop "
                  f">/dev/null 2>&1; rm -rf {quote(self.directory)}")
        kwargs = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        self.watchdog = subprocess.Popen(["sh", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True, cwd="/", **kwargs)

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        kwargs = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        done = subprocess.run([os.path.join(self.bin, tool), *args], capture_output=True, text=True,
                              timeout=timeout, cwd=self.directory, **kwargs)
        if done.returncode != 0:
            log = ""
            if os.path.exists(self.log):
                with open(self.log, errors="replace") as f:
                    log = f.read()[-4000:]
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n{log}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")
            self.running = False

    def restart(self, mode: str = "immediate") -> None:
        self.stop(mode)
        self.start()

    def dsn(self, **overrides) -> str:
        """A libpq URL of this server (keywords override user, password, dbname, host, port)."""
        parts = {"user": SUPERUSER, "password": PASSWORD, "host": "127.0.0.1", "port": self.port,
                 "dbname": "postgres", **overrides}
        auth = parts["user"] + (f":{parts['password']}" if parts["password"] else "")
        return f"postgresql://{auth}@{parts['host']}:{parts['port']}/{parts['dbname']}"

    def new_schema(self) -> str:
        """A schema name no other test uses (the tests of one server share its database)."""
        return f"t_{os.getpid()}_{uuid.uuid4().hex[:10]}"

    def schema_of(self, key: str) -> str:
        """The schema of a test, named after something of its own (its data directory)."""
        import hashlib

        return "t_" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()

    def destroy(self) -> None:
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait()
        try:
            if self.running:
                try:
                    self.stop("immediate")
                except (RuntimeError, OSError, subprocess.SubprocessError):
                    pass
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
