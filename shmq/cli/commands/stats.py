# SPDX-License-Identifier: Apache-2.0
"""``shmq stats [NAME ...]``: counters, depths and latencies of queues, once or live."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from shmq.cli.commands import Command, Stopped, _raise_stopped
from shmq.ops import views
from shmq.cli.commands._common import add_backend_argument, QueueSet, add_path_argument, check_queue, data_dir, duration, emit, flush, table, when

STATS_DESCRIPTION = """\
Shows the metrics of queues (q.stats()): job counters since the queue was
made, what is in it now (depth, in flight, waiting for a time, consumers,
dead letters) and the wait (enqueue to start) and run (start to end) times
at p50 / p99 / max. Without NAME: every queue in the data directory.

--watch refreshes every SECONDS (default 2) until ^C or SIGTERM, adding the
rate per second of each counter since the previous refresh. On a terminal the
screen is redrawn in place; otherwise a new table is printed each time.

--json prints one JSON object {"time", "path", "queues": [...]} (with
--watch, one such object a line per refresh; each queue then has
"rates_per_second", null on the first). Queues whose region is gone but whose
log is there (not loaded since a restart) are listed in "not_loaded"."""

STATS_EPILOG = """\
examples:
  shmq stats                              every queue in the default data directory
  shmq stats jobs emails --path /var/lib/myapp
  shmq stats jobs --watch                 live, every 2 s, with rates
  shmq stats jobs --watch 0.5 --lanes     twice a second, with a table per lane
  shmq stats --json | jq '.queues[] | {queue, depth, dead_letters}'"""

_COUNTER_ROWS = (
    ("enqueued", "enqueued"),
    ("started", "started"),
    ("done", "done"),
    ("failed", "failed"),
    ("retried", "retried"),
    ("dead", "dead"),
    ("deduplicated", "deduplicated"),
    ("scheduled", "scheduled (delay)"),
    ("throttled", "throttled"),
    ("lease_expired", "lease expired"),
    ("consumer_died", "consumer died"),
    ("cancelled", "cancelled"),
)
_GAUGE_ROWS = (
    ("depth", "depth"),
    ("in_flight", "in flight"),
    ("waiting", "waiting (time)"),
    ("consumers", "consumers"),
    ("unique_keys", "unique keys"),
    ("backlog", "backlog (log)"),
    ("dead_letters", "dead letters"),
)
_LANE_COLUMNS = ("depth", "in_flight", "waiting", "enqueued", "started", "done", "failed", "retried", "dead")


def _interval_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0.05 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"must be seconds from 0.05 to 86400, got {text}")
    return value


def _add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", metavar="NAME", nargs="*", help="queues to show (default: every queue in DIR)")
    add_path_argument(parser)
    add_backend_argument(parser)
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    parser.add_argument("--watch", type=_interval_arg, nargs="?", const=2.0, default=None, metavar="SECONDS",
                        help="refresh every SECONDS (default 2) until ^C, with rates per second")
    parser.add_argument("--lanes", action="store_true", help="also the counters of each lane")


class _Sampler:
    """Takes samples of the queues' stats, keeping one handle per queue."""

    def __init__(self, path: str, names: list[str], lanes: bool):
        self.path, self.lanes = path, lanes
        self.queues = QueueSet(path, names)
        self.previous: dict[str, tuple[float, dict]] = {}

    def sample(self, rates: bool) -> dict:
        attached, not_loaded, gone = self.queues.refresh()
        out = []
        for name, q in attached.items():
            now = time.monotonic()
            stats = q.stats(lanes=self.lanes)
            stats["periodic"] = views.periodic_rows(self.path, name)  # as the dashboard's /api/queues
            if rates:
                stats["rates_per_second"] = self._rates(name, now, stats)
            out.append(stats)
        return {"time": time.time(), "path": self.path, "server": self.queues.server(), "queues": out,
                "not_loaded": not_loaded, "gone": gone}

    def _rates(self, name: str, now: float, stats: dict) -> dict | None:
        counters = {key: stats[key] for key, _ in _COUNTER_ROWS}
        before = self.previous.get(name)
        self.previous[name] = (now, counters)
        if before is None or any(counters[key] < before[1][key] for key in counters):
            return None  # the first sample, or the queue was made anew since
        elapsed = max(now - before[0], 1e-9)
        return {key: round((counters[key] - before[1][key]) / elapsed, 3) for key in counters}

    def close(self) -> None:
        self.queues.close()


def _paused(q: dict) -> str:
    if q.get("paused"):
        return "queue"
    tasks = q.get("paused_tasks") or []
    return ", ".join(tasks) if tasks else "no"


def _rate(value: float) -> str:
    return f"{value:,.1f}/s" if abs(value) < 100 else f"{value:,.0f}/s"


def render(sample: dict, interval: float | None = None) -> list[str]:
    """The lines of the table of a sample."""
    queues = sample["queues"]
    head = f"shmq stats  {sample.get('server') or sample['path']}  {when(sample['time'])}"
    if interval is not None:
        head += f"  (every {interval:g} s, ^C to stop)"
    lines = [head]
    if not queues:
        if sample["names"]:
            lines.append("none of the queues asked for is there now")
        else:
            lines.append(f"no queues in {sample['path']}")
    else:
        headers = [""] + [q["queue"] for q in queues]
        rows = []
        for key, label in _GAUGE_ROWS:
            rows.append([label] + [f"{q[key]:,}" for q in queues])
        for key, label in _COUNTER_ROWS:
            row = [label]
            for q in queues:
                cell = f"{q[key]:,}"
                rates = q.get("rates_per_second")
                if rates is not None:
                    cell += f"  {_rate(rates[key])}"
                row.append(cell)
            rows.append(row)
        for key, label in (("wait_ns", "wait p50/p99/max"), ("run_ns", "run p50/p99/max")):
            rows.append([label] + [" / ".join(duration(q[key][p]) for p in ("p50", "p99", "max")) for q in queues])
        rows.append(["held back (limits, pause)"] + [f"{q.get('held', 0):,}" for q in queues])
        rows.append(["paused"] + [_paused(q) for q in queues])
        lines += table(headers, rows, right=set(range(1, len(headers))))
    for q in queues:
        if "lanes" not in q:
            continue
        lines.append("")
        lines.append(f"lanes of {q['queue']}")
        headers = ["LANE", "KIND"] + [c.replace("_", " ").upper() for c in _LANE_COLUMNS]
        rows = [[lane["lane"], "ordered" if lane["ordered"] else "fifo"] + [f"{lane[c]:,}" for c in _LANE_COLUMNS]
                for lane in q["lanes"]]
        lines += table(headers, rows, right={0} | set(range(2, len(headers))), indent="  ")
    for q in queues:
        for row in q.get("periodic", ()):
            lines.append(f"periodic {q['queue']}: {row['task']} ({row['schedule']}), next run {when(row['next'])}")
    if sample["not_loaded"]:
        lines.append(f"not loaded (a log but no region, e.g. after a restart): {', '.join(sample['not_loaded'])}")
    if sample["gone"]:
        lines.append(f"no longer there: {', '.join(sample['gone'])}")
    return lines


def _stats(args: argparse.Namespace) -> int:
    path = data_dir(args)
    names = list(dict.fromkeys(args.names))
    for name in names:
        check_queue(name, path)  # a name that is not a queue: an error now, not a blank table
    sampler = _Sampler(path, names, args.lanes)
    try:
        if args.watch is None:
            _show(args, sampler.sample(rates=False), names)
            return 0
        return _watch(args, sampler, names)
    finally:
        sampler.close()


def _show(args: argparse.Namespace, sample: dict, names: list[str], interval: float | None = None,
          clear: bool = False) -> None:
    if args.json:
        document = {key: sample[key] for key in ("time", "path", "queues", "not_loaded")}
        if sample["gone"]:
            document["gone"] = sample["gone"]
        emit(json.dumps(document, indent=None if args.watch is not None else 2))
    else:
        lines = render({**sample, "names": names}, interval)
        if clear:
            emit("\x1b[H\x1b[2J" + "\n".join(lines))
        else:
            emit("\n".join(lines) + ("\n" if args.watch is not None else ""))
    flush()


def _watch(args: argparse.Namespace, sampler: _Sampler, names: list[str]) -> int:
    clear = sys.stdout.isatty() and not args.json
    previous = {signo: signal.signal(signo, _raise_stopped) for signo in (signal.SIGTERM, signal.SIGHUP)}
    try:
        start = time.monotonic()
        tick = 0
        while True:
            _show(args, sampler.sample(rates=True), names, args.watch, clear)
            tick += 1
            # On a fixed schedule: a slow sample does not push later ones back.
            delay = start + tick * args.watch - time.monotonic()
            if delay < 0:
                tick += int(-delay // args.watch) + 1
                delay = start + tick * args.watch - time.monotonic()
            time.sleep(max(0.0, delay))
    except (KeyboardInterrupt, Stopped):
        if clear:
            emit()
        return 0  # the usual way to end a watch
    finally:
        for signo, handler in previous.items():
            signal.signal(signo, handler)


COMMAND = Command(
    help="show counters, depths and wait/run times of queues (--watch: live)",
    description=STATS_DESCRIPTION,
    epilog=STATS_EPILOG,
    add_arguments=_add_stats_arguments,
    run=_stats,
)
