# SPDX-License-Identifier: Apache-2.0
"""Jobs/s end to end on PostgreSQL through host bridges: N no-op jobs are
enqueued first, then `shmq worker` runs on 1 and on 2 "hosts" (each its own
data directory) of P processes each; the time until every job is done, and
the bridges' PostgreSQL round trips per job (from their exit log).

    python benchmarks/bench_pg_hosts.py --dsn postgresql://user:pw@host/db [--jobs 10000] [--processes 2]

It makes a schema of its own per run (bench_hosts_1, bench_hosts_2: dropped
first) in the database of the DSN. Without --dsn it starts a server of its
own as the tests do (tests/pg_server.py; PostgreSQL installed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

APP = '''
import os, shmq
app = shmq.App("bench", backend=os.environ["BENCH_DSN"], schema=os.environ["BENCH_SCHEMA"])

@app.task
def noop(i):
    return None
'''


def run(dsn: str, hosts: int, jobs: int, processes: int, workdir: str) -> dict:
    import psycopg

    schema = f"bench_hosts_{hosts}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    env = dict(os.environ, BENCH_DSN=dsn, BENCH_SCHEMA=schema, SHMQ_SUPERVISOR_AUTOSTART="0",
               PYTHONPATH=workdir + os.pathsep + ROOT)
    subprocess.run([sys.executable, "-c", f"import bench_app\nfor i in range({jobs}): bench_app.noop.enqueue(i)"],
                   env=env, check=True, cwd=workdir)
    procs, logs = [], []
    started = time.monotonic()
    for h in range(hosts):
        data = tempfile.mkdtemp(prefix=f"host{h}-", dir=workdir)
        logs.append(os.path.join(workdir, f"{schema}-host{h}.log"))
        with open(logs[-1], "w") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "shmq", "worker", "bench_app:app", "--processes",
                                           str(processes)], env=dict(env, SHMQ_PATH=data), stderr=log, cwd=workdir,
                                          start_new_session=True))
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while conn.execute(f"""SELECT count(*) FROM "{schema}".jobs WHERE state = 'done'""").fetchone()[0] < jobs:
                if any(p.poll() is not None for p in procs):
                    raise SystemExit(f"a worker pool exited: see {logs}")
                time.sleep(0.01)
        elapsed = time.monotonic() - started
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    trips = claimed = 0
    for path in logs:
        with open(path) as f:
            for found in re.finditer(r"(\d+) job\(s\) claimed, \d+ outcome\(s\) written, (\d+) round trip", f.read()):
                claimed += int(found.group(1))
                trips += int(found.group(2))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return {"hosts": hosts, "processes_per_host": processes, "jobs": jobs, "seconds": round(elapsed, 2),
            "jobs_per_s": round(jobs / elapsed), "round_trips_per_job": round(trips / max(1, claimed), 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="a PostgreSQL server (default: one of our own, as the tests start)")
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--processes", type=int, default=2, help="worker processes per host")
    args = parser.parse_args(argv)
    server = None
    dsn = args.dsn
    if dsn is None:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from pg_server import PostgresServer

        server = PostgresServer()
        dsn = server.dsn()
    try:
        with tempfile.TemporaryDirectory(prefix="shmq-bench-hosts-") as workdir:
            with open(os.path.join(workdir, "bench_app.py"), "w") as f:
                f.write(APP)
            for hosts in (1, 2):
                print(json.dumps(run(dsn, hosts, args.jobs, args.processes, workdir)), flush=True)
    finally:
        if server is not None:
            server.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
