# SPDX-License-Identifier: Apache-2.0
"""``shmq metrics [NAME ...] [--serve]``: the Prometheus text of queues, once or over HTTP."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from shmq.cli.commands import Command, CommandError, Stopped, _int_arg, _raise_stopped
from shmq.cli.commands._common import add_backend_argument, QueueSet, add_path_argument, check_queue, data_dir, emit, flush

METRICS_DESCRIPTION = """\
The metrics of queues in the Prometheus text format (version 0.0.4): job
counters per lane, depth, in flight, waiting, consumers, dead letters,
backlog, and histograms of wait and run times. Without NAME: every queue in
the data directory (looked for again at each scrape with --serve).

Without --serve the text is printed once. With --serve it is served over
HTTP at /metrics (any other path: 404), by default on 127.0.0.1 port 9464,
until SIGTERM or ^C (exit status 0). Connections are served concurrently; one
that sends no request within 10 s is closed. Every scrape reads shared memory afresh;
queues removed meanwhile drop out, queues made again are attached anew.
The server listens where --host says: keep the default loopback address
unless the network in between is trusted (there is no authentication)."""

METRICS_EPILOG = """\
examples:
  shmq metrics jobs                           the text once, on stdout
  shmq metrics --serve                        every queue of the data directory at http://127.0.0.1:9464/metrics
  shmq metrics jobs emails --serve --port 9500 --path /var/lib/myapp
  shmq metrics --serve --port 0               any free port (the address is printed on stderr)

Prometheus scrape config:
  scrape_configs:
    - job_name: shmq
      static_configs: [{targets: ["127.0.0.1:9464"]}]"""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds a connection may take to send its request or take the reply: a
# client that connects and stays silent is dropped after this, and meanwhile
# it holds only its own thread, never another scrape.
CONNECTION_TIMEOUT = 10.0


def _add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", metavar="NAME", nargs="*", help="queues (default: every queue in DIR)")
    add_path_argument(parser)
    add_backend_argument(parser)
    parser.add_argument("--serve", action="store_true", help="serve the metrics over HTTP at /metrics until stopped")
    parser.add_argument("--port", type=_int_arg(0, 65535), default=9464,
                        help="TCP port to listen on with --serve (default 9464; 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on with --serve (default 127.0.0.1: this machine only)")


def _text(queues: QueueSet) -> str:
    from shmq.ops.metrics import prometheus

    attached, _, _ = queues.refresh()
    return prometheus(list(attached.values()))


def _handler(queues: QueueSet):
    reading = threading.Lock()  # one scrape reads the queues at a time (the QueueSet is not thread-safe)

    class Handler(BaseHTTPRequestHandler):
        timeout = CONNECTION_TIMEOUT  # on the connection's socket: reads and writes give up after it

        def version_string(self) -> str:
            return "shmq-metrics"

        def _reply(self, code: int, body: bytes, content_type: str, head: bool) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _serve(self, head: bool) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self._reply(404, b"not found: the metrics are at /metrics\n", "text/plain; charset=utf-8", head)
                return
            try:
                with reading:
                    body = _text(queues).encode()
            except Exception as exc:  # noqa: BLE001 - one failed scrape must not stop the server
                text = " ".join(str(exc).split()) or type(exc).__name__
                print(f"shmq metrics: error: {text}", file=sys.stderr)
                self._reply(500, f"error reading the queues: {text}\n".encode(), "text/plain; charset=utf-8", head)
                return
            self._reply(200, body, CONTENT_TYPE, head)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._serve(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve(head=True)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet: scrapes come every few seconds
            pass

    return Handler


def _server(host: str, port: int, handler) -> ThreadingHTTPServer:
    # A thread per connection: a client that connects and sends nothing (or
    # reads slowly) blocks only its own thread, and only for CONNECTION_TIMEOUT.
    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        allow_reuse_address = True
        daemon_threads = True  # a stuck connection never keeps the process from exiting
        block_on_close = False

    try:
        return Server((host, port), handler)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CommandError(f"cannot listen on {host} port {port}: {reason}") from None


def _metrics(args: argparse.Namespace) -> int:
    path = data_dir(args)
    names = list(dict.fromkeys(args.names))
    for name in names:
        check_queue(name, path)
    queues = QueueSet(path, names)
    try:
        if not args.serve:
            text = _text(queues)
            emit(text.rstrip("\n"))
            flush()
            return 0
        return _serve(args, queues, names, path)
    finally:
        queues.close()


def _serve(args: argparse.Namespace, queues: QueueSet, names: list[str], path: str) -> int:
    server = _server(args.host, args.port, _handler(queues))
    previous = {signo: signal.signal(signo, _raise_stopped) for signo in (signal.SIGTERM, signal.SIGHUP)}
    try:
        host, port = server.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        which = ", ".join(names) if names else f"every queue in {path}"
        print(f"shmq metrics: serving http://{shown}:{port}/metrics ({which}); ^C or SIGTERM stops",
              file=sys.stderr, flush=True)
        try:
            server.serve_forever(poll_interval=0.5)
        except (KeyboardInterrupt, Stopped):
            pass
        print("shmq metrics: stopped", file=sys.stderr, flush=True)
        return 0
    finally:
        server.server_close()
        for signo, handler in previous.items():
            signal.signal(signo, handler)


COMMAND = Command(
    help="print the Prometheus metrics of queues, or serve them over HTTP (--serve)",
    description=METRICS_DESCRIPTION,
    epilog=METRICS_EPILOG,
    add_arguments=_add_metrics_arguments,
    run=_metrics,
)
