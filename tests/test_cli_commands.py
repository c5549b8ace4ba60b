# SPDX-License-Identifier: Apache-2.0
"""The commands on live queues (enqueue, stats, inspect, dead, log dump,
metrics), each run as ``python -m shmq ...`` in a subprocess against a queue
this test process holds open: jobs queued, two leased to this process (one
of them holding an ordered lane's gate), two dead, one delayed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import posix_ipc
import pytest

from shmq._lib import lib
from shmq.channel.queue import region_name

SMALL = {"capacity": 1024, "segment_bytes": 1 << 20, "jobs_capacity": 64, "unique_capacity": 64,
         "result_capacity": 64, "result_bytes": 1 << 16}


def _env(**extra: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "SHMQ_PATH"}
    env["SHMQ_SUPERVISOR_AUTOSTART"] = "0"  # the commands attach; nothing else runs beside them
    env.update(extra)
    return env


def shmq_cli(*args: str, stdin: str | None = None, cwd: str | None = None, env: dict | None = None,
             timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmq", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env or _env())


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def one_error_line(result: subprocess.CompletedProcess, code: int = 2) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


class Live:
    """A queue with every kind of job in it, held open by this process."""

    def __init__(self, make_queue, qpath: str):
        self.path = qpath
        self.q = q = make_queue(durability="os", ordered_lanes=1, **SMALL)
        self.name = q.name
        first = [q.enqueue({"n": n}).id for n in range(3)]
        self.held = q.fetch(timeout=5)  # leased to this process, kept
        dead = [q.fetch(timeout=5), q.fetch(timeout=5)]
        assert [self.held.id] + [d.id for d in dead] == first
        for n, d in enumerate(dead, 1):
            d.fail(ValueError(f"bad input {n}"), retry=False)
        self.dead_ids = [d.id for d in dead]
        self.grouped_id = q.enqueue({"g": 1}, group="g1").id
        self.grouped = q.fetch(timeout=5)  # holds the ordered lane's gate
        assert self.grouped.id == self.grouped_id
        self.queued_ids = [q.enqueue({"n": n}).id for n in (3, 4)]
        self.delayed_id = q.enqueue({"later": True}, delay=600).id


@pytest.fixture(autouse=True)
def _no_supervisor(monkeypatch):
    monkeypatch.setenv("SHMQ_SUPERVISOR_AUTOSTART", "0")


@pytest.fixture
def live(make_queue, qpath):
    return Live(make_queue, qpath)


# --------------------------------------------------------------------------- enqueue


def test_enqueue_prints_one_id_per_job(make_queue, qpath):
    q = make_queue(durability="os", ordered_lanes=1, **SMALL)
    out = ok(shmq_cli("enqueue", q.name, '{"user": 42}', '[1, "two", null]', '"text"', "--path", qpath))
    ids = [int(line) for line in out.splitlines()]
    assert len(ids) == 3 and len(set(ids)) == 3
    assert [q.job(i).status() for i in ids] == ["queued"] * 3
    bodies = []
    for expected in ids:
        d = q.fetch(timeout=5)
        assert d.id == expected
        bodies.append(d.body)
        d.ack()
    assert bodies == [{"user": 42}, [1, "two", None], "text"]


def test_enqueue_options(make_queue, qpath):
    q = make_queue(durability="os", ordered_lanes=1, **SMALL)
    first = ok(shmq_cli("enqueue", q.name, "1", "--unique", "k1", "--path", qpath)).strip()
    again = ok(shmq_cli("enqueue", q.name, "2", "--unique", "k1", "--path", qpath)).strip()
    assert again == f"duplicate of {first}"
    delayed = int(ok(shmq_cli("enqueue", q.name, "3", "--delay", "300", "--path", qpath)))
    assert q.job(delayed).status() == "scheduled"
    grouped = int(ok(shmq_cli("enqueue", q.name, '"g"', "--group", "g7", "--retries", "0", "--path", qpath)))
    seen = {}
    for _ in range(2):
        d = q.fetch(timeout=5)
        seen[d.id] = (d.body, d.group, d.retries)
        d.ack()
    assert seen == {int(first): (1, None, q.retry_policy.retries), grouped: ("g", "g7", 0)}


def test_enqueue_bad_json_enqueues_nothing(make_queue, qpath):
    q = make_queue(durability="os", **SMALL)
    line = one_error_line(shmq_cli("enqueue", q.name, '{"a": 1}', "{nope", "--path", qpath))
    assert line.startswith("shmq enqueue: error: JSON value 2 is not JSON")
    assert "'{nope'" in line and "nothing was enqueued" in line
    line = one_error_line(shmq_cli("enqueue", q.name, "--stdin", "--path", qpath, stdin='1\n\n[2]\n{"x":\n'))
    assert "stdin line 4 is not JSON" in line
    assert q.qsize() == 0 and q.stats()["enqueued"] == 0


def test_enqueue_stdin_one_job_per_line(make_queue, qpath):
    q = make_queue(durability="os", **SMALL)
    lines = "\n".join(json.dumps({"i": i}) for i in range(50)) + "\n\n"
    # SHMQ_PATH instead of --path, as shmq.Queue reads it
    out = ok(shmq_cli("enqueue", q.name, "--stdin", stdin=lines, env=_env(SHMQ_PATH=qpath)))
    assert len(out.splitlines()) == 50
    assert [q.fetch(timeout=5).body["i"] for _ in range(50)] == list(range(50))


def test_enqueue_task_calls(make_queue, qpath, tmp_path):
    q = make_queue(durability="os", ordered_lanes=4, **SMALL)
    (tmp_path / "mytasks.py").write_text(textwrap.dedent(f"""
        import shmq
        app = shmq.App({q.name!r}, path={qpath!r}, **{SMALL!r})

        @app.task(retries=7)
        def send_email(user_id, kind="welcome"):
            return kind
    """))
    out = ok(shmq_cli("enqueue", q.name, "[42]", '{"args": [43], "kwargs": {"kind": "bye"}}',
                      "--app", "mytasks:app", "--task", "send_email", cwd=str(tmp_path)))
    assert len(out.splitlines()) == 2
    # Without --app the name is sent as given.
    ok(shmq_cli("enqueue", q.name, '{"kwargs": {"user_id": 44}}', "--task", "mytasks.send_email",
                "--path", qpath))
    calls = [q.fetch(timeout=5) for _ in range(3)]
    assert [d.body for d in calls] == [["mytasks.send_email", [42], {}], ["mytasks.send_email", [43], {"kind": "bye"}],
                                       ["mytasks.send_email", [], {"user_id": 44}]]
    assert calls[0].retries == 7  # the task's own policy travels with the job
    line = one_error_line(shmq_cli("enqueue", q.name, "[1]", "--app", "mytasks:app", "--task", "nope",
                                   cwd=str(tmp_path)))
    assert line == f"shmq enqueue: error: no task 'nope' in app '{q.name}' (known: mytasks.send_email)"
    line = one_error_line(shmq_cli("enqueue", q.name, "5", "--task", "t", "--path", qpath))
    assert "the arguments of a task call are a list" in line


# --------------------------------------------------------------------------- unknown queues


@pytest.mark.parametrize("command", [
    ["enqueue", "nope", "1"], ["stats", "nope"], ["inspect", "nope"], ["dead", "list", "nope"],
    ["log", "dump", "nope"], ["metrics", "nope"],
])
def test_unknown_queue_lists_the_known_ones(make_queue, qpath, command):
    q1 = make_queue(name="alpha-" + os.urandom(3).hex(), durability="os", **SMALL)
    q2 = make_queue(name="beta-" + os.urandom(3).hex(), durability="none", capacity=64)
    line = one_error_line(shmq_cli(*command, "--path", qpath))
    assert line == f"shmq {command[0]}: error: no queue nope in {qpath} (known: {q1.name}, {q2.name})"
    # Looking never makes a queue.
    assert not os.path.exists("/dev/shm" + region_name("nope", qpath))
    assert not [entry for entry in os.listdir(qpath) if entry.startswith("nope")]


def test_a_queue_with_only_its_log_is_not_loaded_and_not_made(make_queue, qpath):
    q = make_queue(durability="os", **SMALL)
    q.enqueue({"kept": 1})
    name = q.name
    q.close()
    posix_ipc.unlink_shared_memory(region_name(name, qpath))  # as after a restart
    line = one_error_line(shmq_cli("stats", name, "--path", qpath))
    assert f"queue {name} in {qpath} is not loaded" in line
    assert not os.path.exists("/dev/shm" + region_name(name, qpath))
    summary = json.loads(ok(shmq_cli("log", "dump", name, "--summary", "--json", "--path", qpath)))["summary"]
    assert summary["live_jobs"] == 1
    stats = json.loads(ok(shmq_cli("stats", "--json", "--path", qpath)))
    assert stats["queues"] == [] and stats["not_loaded"] == [name]


def test_settings_elsewhere_do_not_stop_a_look(live, tmp_path):
    """A config file or SHMQ_<KEY> variables that disagree with the queue:
    the commands attach to the queue as it is, and start no supervisor."""
    (tmp_path / "shmq.toml").write_text("[defaults]\nlanes = 4\ncapacity = 4096\n\n[supervisor]\nautostart = false\n")
    env = {key: value for key, value in _env(SHMQ_PATH=live.path, SHMQ_ORDERED_LANES="3").items()
           if key != "SHMQ_SUPERVISOR_AUTOSTART"}
    stats = json.loads(ok(shmq_cli("stats", live.name, "--json", cwd=str(tmp_path), env=env)))
    assert stats["queues"][0]["depth"] == 2
    doc = json.loads(ok(shmq_cli("inspect", live.name, "--json", cwd=str(tmp_path), env=env)))
    assert (doc["params"]["lanes"], doc["params"]["capacity"], doc["params"]["ordered_lanes"]) == (1, 1024, 1)
    new_id = int(ok(shmq_cli("enqueue", live.name, "1", cwd=str(tmp_path), env=env)))
    assert live.q.job(new_id).status() == "queued"
    assert "supervisor.lock" not in os.listdir(live.path)


# --------------------------------------------------------------------------- stats


def test_stats_json_and_table(live):
    doc = json.loads(ok(shmq_cli("stats", live.name, "--json", "--lanes", "--path", live.path)))
    assert set(doc) == {"time", "path", "queues", "not_loaded"}
    assert doc["path"] == live.path and doc["not_loaded"] == []
    (s,) = doc["queues"]
    expected = {"queue": live.name, "enqueued": 7, "started": 4, "done": 0, "failed": 2, "dead": 2, "retried": 0,
                "scheduled": 1, "depth": 2, "in_flight": 2, "waiting": 1, "consumers": 1, "dead_letters": 2}
    assert {key: s[key] for key in expected} == expected
    assert set(s["wait_ns"]) == {"count", "p50", "p90", "p99", "p999", "max"} and s["wait_ns"]["count"] == 4
    assert s["run_ns"]["count"] == 2
    assert [(lane["lane"], lane["ordered"], lane["enqueued"], lane["in_flight"]) for lane in s["lanes"]] == [
        (0, False, 6, 1), (1, True, 1, 1)]

    table = ok(shmq_cli("stats", live.name, "--path", live.path))
    for label, value in (("depth", 2), ("in flight", 2), ("waiting \\(time\\)", 1), ("consumers", 1),
                         ("dead letters", 2), ("enqueued", 7), ("started", 4), ("failed", 2), ("dead", 2)):
        assert re.search(rf"^{label}\s+{value}$", table, re.MULTILINE), (label, table)
    assert re.search(r"^wait p50/p99/max\s+\S+ \S*s / \S+ \S*s / \S+ \S*s$", table, re.MULTILINE), table
    assert table.splitlines()[1].split() == [live.name]


def test_stats_of_every_queue_in_the_directory(live, make_queue):
    other = make_queue(durability="none", capacity=64)
    other.put(b"x")
    doc = json.loads(ok(shmq_cli("stats", "--json", "--path", live.path)))
    assert sorted(s["queue"] for s in doc["queues"]) == sorted([live.name, other.name])
    assert {s["queue"]: s["depth"] for s in doc["queues"]}[other.name] == 1


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "table"])
def test_stats_watch_refreshes_with_rates(live, as_json):
    proc = subprocess.Popen([sys.executable, "-m", "shmq", "stats", live.name, "--watch", "0.3", "--path", live.path]
                            + (["--json"] if as_json else []), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env())
    try:
        samples = []
        deadline = time.monotonic() + 20
        if as_json:
            while not samples or samples[-1]["queues"][0]["enqueued"] == 7:
                assert time.monotonic() < deadline
                line = proc.stdout.readline()
                assert line, proc.stderr.read()
                samples.append(json.loads(line))
                if len(samples) == 1:
                    live.q.enqueue({"between": 1})  # a rate above zero in the next refresh
        else:
            text = ""
            while text.count("shmq stats  ") < 3:  # two whole tables, and the head of a third
                assert time.monotonic() < deadline
                line = proc.stdout.readline()
                assert line, proc.stderr.read()
                text += line
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
    if as_json:
        assert len(samples) >= 2 and samples[0]["queues"][0]["rates_per_second"] is None
        assert all(set(sample) == {"time", "path", "queues", "not_loaded"} for sample in samples)
        last = samples[-1]["queues"][0]
        assert last["enqueued"] == 8
        assert set(last["rates_per_second"]) >= {"enqueued", "started", "done", "failed", "dead"}
        assert last["rates_per_second"]["enqueued"] > 0 and last["rates_per_second"]["done"] == 0
    else:
        assert "\x1b" not in text  # not a terminal: plain tables, one after the other
        tables = text.split("shmq stats  ")[1:3]
        assert "(every 0.3 s, ^C to stop)" in tables[0]
        assert re.search(r"^enqueued\s+7  0\.0/s$", tables[1], re.MULTILINE), tables[1]


# --------------------------------------------------------------------------- inspect


def test_inspect_json(live):
    doc = json.loads(ok(shmq_cli("inspect", live.name, "--json", "--path", live.path)))
    assert doc["name"] == live.name and doc["path"] == live.path
    assert doc["layout_version"] == lib.SHMQ_LAYOUT_VERSION
    assert doc["region"] == "/dev/shm" + region_name(live.name, live.path)
    assert doc["params"]["ordered_lanes"] == 1 and doc["params"]["capacity"] == 1024
    assert doc["params"]["durability"] == "os" and doc["params"]["jobs_capacity"] == 64

    lanes = doc["lanes"]
    assert [(lane["lane"], lane["ordered"], lane["depth"]) for lane in lanes] == [(0, False, 2), (1, True, 0)]
    assert "gate" not in lanes[0]
    assert lanes[1]["gate"] == "held" and lanes[1]["gate_job"] == live.grouped_id

    mine = [p for p in doc["participants"] if p["pid"] == os.getpid()]
    assert len(mine) == 1 and mine[0]["alive"] and mine[0]["roles"] == ["consumer"] and not mine[0]["self"]
    (own,) = [p for p in doc["participants"] if p["self"]]
    assert own["roles"] == [] and own["pid"] != os.getpid()

    jobs = {job["job_id"]: job for job in doc["jobs"]}
    assert set(jobs) == {live.held.id, live.grouped_id, live.delayed_id}
    for job_id in (live.held.id, live.grouped_id):
        assert jobs[job_id]["state"] == "running" and jobs[job_id]["owner_pid"] == os.getpid()
        assert 200 < jobs[job_id]["lease_left_s"] <= 300 and jobs[job_id]["due_at"] is None
        assert jobs[job_id]["attempt"] == 1
    assert jobs[live.grouped_id]["lane"] == 1 and "ordered" in jobs[live.grouped_id]["flags"]
    delayed = jobs[live.delayed_id]
    assert delayed["state"] == "scheduled" and delayed["owner_pid"] is None and delayed["lease_left_s"] is None
    assert 500 < delayed["due_in_s"] <= 600 and delayed["due_at"].endswith("+00:00")
    assert delayed["lane"] is None  # not in a lane yet: any unordered lane when due

    log = doc["log"]
    assert log["directory"] == os.path.join(live.path, live.name + ".log")
    assert sorted(f["name"] for f in log["files"]) == sorted(os.listdir(log["directory"]))
    assert all(re.fullmatch(r"[0-9a-f]{16}\.seg|snapshot|params", f["name"]) for f in log["files"])
    assert log["stats"]["records_appended"] >= 7 and "backlog" in log["stats"]
    assert doc["dead_letters"] == 2


def test_inspect_text(live):
    out = ok(shmq_cli("inspect", live.name, "--path", live.path))
    assert out.startswith(f"queue {live.name} in {live.path}\n")
    assert f"layout version {lib.SHMQ_LAYOUT_VERSION}" in out
    assert re.search(rf"^\s+1\s+ordered\s+.*held by job {live.grouped_id}$", out, re.MULTILINE), out
    assert re.search(rf"^\s+{os.getpid()}\s+yes\s+consumer\s", out, re.MULTILINE), out
    assert re.search(r"\sthis inspect$", out, re.MULTILINE)
    assert re.search(rf"^\s+{live.held.id}\s+running\s+{os.getpid()}\s+\S+", out, re.MULTILINE), out
    assert re.search(rf"^\s+{live.delayed_id}\s+scheduled\s+-\s+-\s+in \d+m\d\ds\s+1\s+any\s", out, re.MULTILINE), out
    assert f"log {os.path.join(live.path, live.name + '.log')} (" in out
    assert out.rstrip().endswith("dead letters: 2")


# --------------------------------------------------------------------------- dead


def test_dead_list(live):
    out = ok(shmq_cli("dead", "list", live.name, "--path", live.path))
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "ATTEMPTS", "FAILED", "AT", "ERROR", "BODY"]
    assert len(lines) == 3
    for line, (n, job_id) in zip(lines[1:], enumerate(live.dead_ids, 1)):
        assert re.match(rf"^\s*{job_id}\s+1\s+\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d \S+\s+ValueError: bad input {n}\s+"
                        rf'\{{"n":{n}\}}$', line), line
    doc = json.loads(ok(shmq_cli("dead", "list", live.name, "--json", "--limit", "1", "--path", live.path)))
    assert doc["total"] == 2 and len(doc["dead"]) == 1
    (dead,) = doc["dead"]
    assert dead["id"] == live.dead_ids[0] and dead["attempts"] == 1 and dead["body"] == {"n": 1}
    assert dead["error"]["type"] == "ValueError" and dead["error"]["message"] == "bad input 1"
    assert "ValueError: bad input 1" in dead["error"]["traceback"] and dead["group"] is None
    only = json.loads(ok(shmq_cli("dead", "list", live.name, "--json", "--id", str(live.dead_ids[1]),
                                  "--path", live.path)))
    assert [d["id"] for d in only["dead"]] == [live.dead_ids[1]]


def test_dead_retry_and_purge(live):
    q = live.q
    for action in ("purge", "retry"):
        line = one_error_line(shmq_cli("dead", action, live.name, "--path", live.path))
        assert line == f"shmq dead: error: dead {action} needs --all or --id ID: which dead jobs? (nothing was changed)"
    line = one_error_line(shmq_cli("dead", "purge", live.name, "--id", "12345", "--path", live.path))
    assert "no dead job 12345 in queue" in line and "nothing was changed" in line
    assert len(q.dead_letters) == 2

    result = shmq_cli("dead", "retry", live.name, "--id", str(live.dead_ids[0]), "--path", live.path)
    (new_id,) = [int(line) for line in ok(result).splitlines()]
    assert new_id not in live.dead_ids and q.job(new_id).status() == "queued"
    assert "1 dead job(s)" in result.stderr
    assert [job.id for job in q.dead_letters] == [live.dead_ids[1]]

    out = ok(shmq_cli("dead", "purge", live.name, "--all", "--path", live.path))
    assert out == f"purged 1 dead job(s) of {live.name}\n"
    assert len(q.dead_letters) == 0
    assert ok(shmq_cli("dead", "list", live.name, "--path", live.path)) == f"no dead jobs in queue {live.name}\n"


# --------------------------------------------------------------------------- log dump


def test_log_dump(live):
    log_dir = os.path.join(live.path, live.name + ".log")
    by_name = json.loads(ok(shmq_cli("log", "dump", live.name, "--summary", "--json", "--path", live.path)))
    by_dir = json.loads(ok(shmq_cli("log", "dump", log_dir, "--summary", "--json")))
    assert by_name == by_dir
    summary = by_name["summary"]
    assert summary["records_by_type"]["ENQUEUE"] == 7 and summary["records_by_type"]["DEAD"] == 2
    assert summary["live_jobs"] == 5 and not summary["damaged"]

    listed = json.loads(ok(shmq_cli("log", "dump", live.name, "--json", "--limit", "5", "--payload",
                                    "--path", live.path)))
    entries = [e for e in listed["entries"] if e["kind"] != "file"]
    enqueues = [e for e in entries if e.get("type") == "ENQUEUE"]
    assert len(entries) == 5 and enqueues and all("payload_head" in e for e in enqueues)
    assert enqueues[0]["job_id"] == live.held.id

    text = ok(shmq_cli("log", "dump", live.name, "--path", live.path))
    assert text.rstrip().endswith("status: clean")
    assert one_error_line(shmq_cli("log", "dump", "/no/such/dir")).startswith("shmq log: error: /no/such/dir:")


# --------------------------------------------------------------------------- metrics


def _metric_lines(text: str, name: str) -> set[str]:
    return {
        f'shmq_depth{{queue="{name}"}} 2',
        f'shmq_in_flight{{queue="{name}"}} 2',
        f'shmq_dead_letters{{queue="{name}"}} 2',
        f'shmq_jobs_enqueued_total{{queue="{name}",lane="0"}} 6',
        f'shmq_jobs_enqueued_total{{queue="{name}",lane="1"}} 1',
        f'shmq_wait_seconds_count{{queue="{name}"}} 4',
    } - set(text.splitlines())


def test_metrics_once(live):
    out = ok(shmq_cli("metrics", live.name, "--path", live.path))
    assert _metric_lines(out, live.name) == set()
    assert "# TYPE shmq_depth gauge" in out.splitlines()


def test_metrics_serve(live):
    proc = subprocess.Popen([sys.executable, "-m", "shmq", "metrics", "--serve", "--port", "0", "--path", live.path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        banner = proc.stderr.readline()
        match = re.search(r"serving http://127\.0\.0\.1:(\d+)/metrics", banner)
        assert match, banner + proc.stderr.read()
        base = f"http://127.0.0.1:{match.group(1)}"
        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            body = response.read().decode()
        assert _metric_lines(body, live.name) == set()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "/", timeout=10)
        assert missing.value.code == 404
        live.q.enqueue({"more": 1})  # each scrape reads afresh
        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            assert f'shmq_depth{{queue="{live.name}"}} 3' in response.read().decode().splitlines()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    rest = proc.stderr.read()
    assert "stopped" in rest and "Traceback" not in rest


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", [
    ["enqueue"], ["stats"], ["inspect"], ["dead"], ["dead", "list"], ["dead", "retry"], ["dead", "purge"], ["log"],
    ["log", "dump"], ["metrics"],
])
def test_help_has_examples(command):
    out = ok(shmq_cli(*command, "--help"))
    assert "examples:" in out and f"shmq {command[0]} " in out.split("examples:")[1]
    if command not in (["dead"], ["log"]):  # those list their actions; each action takes --path
        assert "--path DIR" in out
