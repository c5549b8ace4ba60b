# SPDX-License-Identifier: Apache-2.0
"""The dashboard's JSON API against the CLI's --json for the same queue
(one contract: shmq.ops.views), its answers to bad input, and its security:
token, CSRF, read-only, the audit log, and the refusal to bind elsewhere
without a token. A real server (uvicorn) on a real port; real CLI processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import shmq

pytest.importorskip("starlette", reason="the dashboard extra: pip install -e '.[test]'")

from dashboard_server import Server  # noqa: E402

from shmq.dashboard import asgi_app  # noqa: E402


def cli_json(qpath: str, *args: str) -> object:
    result = subprocess.run([sys.executable, "-m", "shmq", *args, "--path", qpath, "--json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def queue_with_jobs(make_queue):
    """A queue with a done, a dead, a retrying, a delayed and a waiting job (none running)."""
    q = make_queue(retries=1, backoff=600.0)
    ids = {}
    for task in ("ok", "doomed", "flaky"):
        ids[task] = q.enqueue([f"app.{task}", [1], {"x": task}]).id
    ids["later"] = q.enqueue(["app.later", [], {}], delay=600, unique="later:1").id
    for _ in range(3):
        d = q.fetch(timeout=5)
        if d.id == ids["ok"]:
            d.ack({"sent": True})
        elif d.id == ids["doomed"]:
            d.fail(KeyError("no such user"), retry=False)
        else:
            d.fail(TimeoutError("slow"))
    ids["waiting"] = q.enqueue(["app.ok", [2], {}]).id
    return q, ids


@pytest.fixture
def server(qpath):
    servers = []

    def start(**kw):
        s = Server(asgi_app(qpath, **kw))
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def without_viewers(inside: dict) -> dict:
    """An inspect document without the entries of the processes looking (the CLI's own, the server's)."""
    inside = dict(inside)
    inside["participants"] = sorted(p["pid"] for p in inside["participants"]
                                    if not p["self"] and p["pid"] != os.getpid())
    inside["participant_slots"] = None
    inside["jobs"] = [{k: v for k, v in job.items() if k not in ("due_in_s", "lease_left_s")}  # they tick
                      for job in inside["jobs"]]
    return inside


def test_api_documents_equal_the_cli_json(queue_with_jobs, server, qpath):
    q, ids = queue_with_jobs
    s = server()
    name = q.name

    status, queues = s.get("/api/queues")
    assert status == 200
    assert queues == cli_json(qpath, "stats")["queues"]
    assert {k: queues[0][k] for k in ("name", "depth", "in_flight", "dead_letters", "enqueued", "done", "failed")} \
        == {"name": name, "depth": 1, "in_flight": 0, "dead_letters": 1, "enqueued": 5, "done": 1, "failed": 2}

    status, inside = s.get(f"/api/queues/{name}")
    assert status == 200
    assert without_viewers(inside) == without_viewers(cli_json(qpath, "inspect", name))

    status, jobs = s.get(f"/api/jobs?queue={name}")
    assert status == 200 and jobs == cli_json(qpath, "jobs", name)
    states = {job["id"]: job["state"] for job in jobs["jobs"]}
    assert states == {ids["ok"]: "done", ids["doomed"]: "dead", ids["flaky"]: "retrying", ids["later"]: "delayed",
                      ids["waiting"]: "waiting"}
    status, dead_only = s.get(f"/api/jobs?queue={name}&state=dead&task=app.doomed")
    assert [job["id"] for job in dead_only["jobs"]] == [ids["doomed"]]
    assert dead_only == cli_json(qpath, "jobs", name, "--state", "dead", "--task", "app.doomed")
    _, by_error = s.get(f"/api/jobs?queue={name}&error=TimeoutError")
    assert [job["id"] for job in by_error["jobs"]] == [ids["flaky"]]
    _, by_key = s.get(f"/api/jobs?queue={name}&unique=later:1")
    assert [job["id"] for job in by_key["jobs"]] == [ids["later"]]
    assert by_key == cli_json(qpath, "jobs", name, "--unique", "later:1")

    status, dead = s.get(f"/api/dead?queue={name}")
    assert status == 200 and dead == cli_json(qpath, "dead", "list", name)
    assert [(r["id"], r["task"], r["error"]["type"]) for r in dead["dead"]] == [(ids["doomed"], "app.doomed", "KeyError")]

    status, processes = s.get("/api/processes")
    assert status == 200
    cli = cli_json(qpath, "ps")
    fields = ("pid", "alive", "role", "queues", "jobs_held")
    assert [{k: p[k] for k in fields} for p in processes["processes"]] == [{k: p[k] for k in fields} for p in cli["processes"]]
    assert processes["supervisor"] == cli["supervisor"]
    assert os.getpid() in [p["pid"] for p in processes["processes"]]


@pytest.mark.parametrize("url, status, words", [
    ("/api/queues/nosuch", 404, ["no queue 'nosuch'", "known:"]),
    ("/api/jobs?queue=nosuch", 404, ["no queue 'nosuch'"]),
    ("/api/jobs", 400, ["queue is missing"]),
    ("/api/jobs?queue={name}&limit=1000000", 400, ["limit=1000000", "1 .. 10000"]),
    ("/api/jobs?queue={name}&limit=ten", 400, ["limit='ten'", "not an integer"]),
    ("/api/jobs?queue={name}&state=sleeping", 400, ["state='sleeping'", "waiting, delayed"]),
    ("/api/jobs?queue={name}&since=yesterday", 400, ["since='yesterday'", "ISO 8601"]),
    ("/api/jobs?queue={name}&colour=red", 400, ["unknown filter colour"]),
    ("/api/dead?queue={name}&limit=0", 400, ["limit=0"]),
])
def test_bad_input_gets_a_4xx_that_says_why(queue_with_jobs, server, url, status, words):
    q, _ = queue_with_jobs
    got, answer = server().get(url.format(name=q.name))
    assert got == status, answer
    assert all(w in answer["error"] for w in words), answer


def test_actions_need_csrf_same_origin_and_are_audited(queue_with_jobs, server, qpath):
    q, ids = queue_with_jobs
    s = server()
    body = {"queue": q.name, "ids": [ids["doomed"]]}
    status, answer = s.post("/api/actions/dead-retry", body, csrf=False)
    assert status == 403 and "CSRF" in answer["error"]
    status, answer = s.post("/api/actions/dead-retry", body, headers={"Origin": "http://evil.example"})
    assert status == 403 and "origin http://evil.example" in answer["error"]
    assert len(q.dead_letters) == 1  # nothing done
    status, answer = s.post("/api/actions/run-now", {"queue": q.name, "ids": [ids["later"]]})
    assert status == 200 and answer == {"due_now": [ids["later"]], "not_waiting": []}
    status, answer = s.post("/api/actions/run-now", {"queue": q.name, "ids": [ids["waiting"]]})
    assert status == 409 and "waits for no time" in answer["error"]
    status, answer = s.post("/api/actions/dead-retry", body)
    assert status == 200 and answer["retried"] == 1
    assert len(q.dead_letters) == 0
    status, answer = s.post("/api/actions/dead-purge", {"queue": q.name, "ids": [ids["doomed"]]})
    assert status == 404 and f"no dead job {ids['doomed']}" in answer["error"]
    with open(os.path.join(qpath, "dashboard-audit.log")) as f:
        audit = [json.loads(line) for line in f]
    assert [(a["action"], "error" in a["outcome"]) for a in audit] == [
        ("run-now", False), ("run-now", True), ("dead-retry", False), ("dead-purge", True)]
    assert audit[2]["params"] == body and audit[2]["who"].startswith("127.0.0.1")


def test_read_only_refuses_and_records(queue_with_jobs, server, qpath):
    q, ids = queue_with_jobs
    s = server(read_only=True)
    status, answer = s.post("/api/actions/dead-purge", {"queue": q.name, "ids": [ids["doomed"]]})
    assert status == 403 and "read-only" in answer["error"]
    assert len(q.dead_letters) == 1
    status, page = s.get(f"/dead?queue={q.name}")
    assert status == 200 and "data-action" not in page and "read-only" in page
    with open(os.path.join(qpath, "dashboard-audit.log")) as f:
        assert "read-only" in json.loads(f.readline())["outcome"]["error"]


def test_token_is_required_on_every_request(queue_with_jobs, server):
    token = "t0ken-of-the-test-0123456789"
    s = server(token=token)
    for url in ("/", "/api/queues", "/static/dashboard.js"):
        status, answer = s.get(url)
        assert status == 401 and "needs its token" in answer["error"], url
    status, answer = s.get("/api/queues", headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert status == 401
    status, answer = s.get("/api/queues", headers={"Authorization": f"Bearer {token}"})
    assert status == 200 and answer[0]["name"] == queue_with_jobs[0].name
    with pytest.raises(Exception, match="too easy to guess"):
        asgi_app("/nonexistent", token="short")


def test_cli_refuses_to_bind_elsewhere_without_a_token(qpath):
    env = {k: v for k, v in os.environ.items() if k != "SHMQ_DASHBOARD_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "shmq", "dashboard", "--path", qpath, "--bind", "0.0.0.0"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "refusing to serve the dashboard on 0.0.0.0:9465 without a token" in result.stderr
    assert "--token" in result.stderr


def test_run_now_and_delete_from_the_cli_and_the_api(queue_with_jobs, server, qpath):
    q, ids = queue_with_jobs
    s = server()

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "shmq", "jobs", q.name, "--path", qpath, *args],
                              capture_output=True, text=True, timeout=60)

    done = cli("--delete", str(ids["flaky"]))
    assert done.returncode == 0 and f"job {ids['flaky']} of {q.name} deleted" in done.stdout, done.stderr
    refused = cli("--delete", str(ids["flaky"]))  # dead now: not pending
    assert refused.returncode == 2 and "is not pending" in refused.stderr and "nothing was changed" in refused.stderr
    status, answer = s.post("/api/actions/delete", {"queue": q.name, "ids": [ids["flaky"]]})
    assert status == 409 and "only waiting, delayed and retrying jobs are deleted" in answer["error"]
    # A job waiting in a lane cannot leave the ring: it is cancelled, and a worker drops it unrun.
    status, answer = s.post("/api/actions/delete", {"queue": q.name, "ids": [ids["waiting"]]})
    assert status == 200 and answer == {"deleted": [ids["waiting"]], "not_waiting": []}
    assert q.job(ids["waiting"]).status() == "cancelled"
    status, answer = s.post("/api/actions/delete", {"queue": q.name, "ids": [ids["later"]]})
    assert status == 200 and answer == {"deleted": [ids["later"]], "not_waiting": []}
    _, jobs = s.get(f"/api/jobs?queue={q.name}&state=dead")
    assert {j["id"]: j["errors"][-1]["error"] for j in jobs["jobs"]} == {
        ids["doomed"]: "KeyError: 'no such user'", ids["flaky"]: "Deleted: deleted with shmq jobs --delete",
        ids["later"]: "Deleted: deleted from the dashboard"}
    ran = cli("--run-now", str(ids["flaky"]))
    assert ran.returncode == 2 and "waits for no time" in ran.stderr


CONSUMER = """
import sys, time, shmq
q = shmq.Queue(sys.argv[1], path=sys.argv[2])
d = q.fetch(timeout=30)
print(d.id, flush=True)
time.sleep(120)
"""
PRODUCER = """
import sys, time, shmq
q = shmq.Queue(sys.argv[1], path=sys.argv[2])
print("open", flush=True)
time.sleep(120)
"""


def test_drain_and_release_with_real_processes(make_queue, server, qpath):
    """drain sends SIGTERM to a live worker of the directory (and to nothing
    else); release takes back at once the lease of a consumer killed with -9."""
    q = make_queue()
    first, second = q.enqueue(["app.a", [], {}]), q.enqueue(["app.b", [], {}])
    s = server()
    procs = [subprocess.Popen([sys.executable, "-c", code, q.name, qpath], stdout=subprocess.PIPE, text=True)
             for code in (CONSUMER, CONSUMER, PRODUCER)]
    try:
        held = {int(p.stdout.readline()) for p in procs[:2]}
        assert held == {first.id, second.id}
        assert procs[2].stdout.readline() == "open\n"
        status, answer = s.post("/api/actions/drain", {"pid": procs[2].pid})
        assert status == 409 and "not a live worker" in answer["error"]  # it took no job
        assert procs[2].poll() is None
        status, answer = s.post("/api/actions/drain", {"pid": procs[0].pid})
        assert status == 200 and answer == {"signalled": procs[0].pid, "signal": "SIGTERM"}
        assert procs[0].wait(30) == -15
        procs[1].kill()
        procs[1].wait(30)
        status, answer = s.post("/api/actions/release", {"queue": q.name})
        assert status == 200 and answer["in_flight_after"] == 0, answer
        got = {q.fetch(timeout=10).id for _ in range(2)}
        assert got == {first.id, second.id}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_all_matching_selects_by_task_and_error_type(queue_with_jobs, server):
    """The dead-letter groups' "all matching": a task's jobs, or ("-") the
    jobs whose body is not an App job, of one error type; nothing else."""
    q, ids = queue_with_jobs
    q.enqueue({"not": "an app job"})
    d = q.fetch(timeout=5)
    while d.body != {"not": "an app job"}:  # the waiting App job comes first
        d.ack()
        d = q.fetch(timeout=5)
    d.fail(KeyError("plain"), retry=False)
    s = server()
    for task, expect in (("app.doomed", [ids["doomed"]]), ("-", [d.id]), ("app.ok", [])):
        status, answer = s.post("/api/actions/dead-preview",
                                {"queue": q.name, "all_matching": True, "task": task, "error_type": "KeyError"})
        assert status == 200 and answer == {"count": len(expect), "ids": expect}, (task, answer)
    status, answer = s.post("/api/actions/dead-purge", {"queue": q.name, "all_matching": True, "task": "-",
                                                        "error_type": "KeyError", "expect": 2})
    assert status == 409 and "1 dead jobs match now, not the 2 you confirmed" in answer["error"]
    status, answer = s.post("/api/actions/dead-purge", {"queue": q.name, "all_matching": True, "task": "-",
                                                        "error_type": "KeyError", "expect": 1})
    assert status == 200 and answer == {"purged": 1}
    assert [job.id for job in q.dead_letters] == [ids["doomed"]]


def test_queue_page_names_the_group_holding_an_ordered_lane(make_queue, server):
    q = make_queue(ordered_lanes=1, retries=2, backoff=600.0)
    job = q.enqueue(["app.g", [1], {}], group="user-42")
    d = q.fetch(timeout=5)
    assert d.id == job.id
    d.fail(ValueError("again"))  # waits for its retry, holding the lane
    status, page = server().get(f"/queues/{q.name}")
    assert status == 200
    assert f'by job <a href="/jobs/{q.name}/{job.id}">{job.id}</a> of group <strong class="gate-group">user-42</strong>' in page


HUNG = """
import sys, time, shmq
q = shmq.Queue(sys.argv[1], path=sys.argv[2])
d = q.fetch(timeout=30)
print(d.id, d.attempt, flush=True)
time.sleep(120)
"""


def test_release_takes_an_ordered_job_from_a_hung_consumer(make_queue, server, qpath):
    """A consumer alive but stuck inside its lease (sleeping) holds an ordered
    lane's job: release, from the CLI and then from the API, takes the lease,
    kills that process (-9) and fails the attempt, so the job runs again at
    once elsewhere (attempt + 1), never twice, and the group's next job only
    after it. Read-only refuses; every release is audited."""
    q = make_queue(ordered_lanes=1, retries=5, lease_timeout=600.0)
    first = q.enqueue(["app.a", [], {}], group="g")
    second = q.enqueue(["app.b", [], {}], group="g")
    s = server()
    procs = []

    def hung() -> tuple[subprocess.Popen, list[int]]:
        p = subprocess.Popen([sys.executable, "-c", HUNG, q.name, qpath], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        return p, [int(x) for x in p.stdout.readline().split()]

    try:
        p1, got = hung()
        assert got == [first.id, 1]
        refused = server(read_only=True).post("/api/actions/release", {"queue": q.name, "job_id": first.id})
        assert refused[0] == 403 and p1.poll() is None
        cli = subprocess.run([sys.executable, "-m", "shmq", "jobs", q.name, "--path", qpath,
                              "--release", str(first.id)], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert f"pid {p1.pid} killed" in cli.stdout and "attempt 1 failed" in cli.stdout, cli.stdout
        assert p1.wait(30) == -9
        p2, got = hung()  # elsewhere: the same job again, the group's next one still behind it
        assert got == [first.id, 2]
        status, page = s.get(f"/jobs?queue={q.name}&state=running")
        assert status == 200 and f'data-action="release" data-queue="{q.name}" data-job-id="{first.id}"' in page
        status, answer = s.post("/api/actions/release", {"queue": q.name, "job_id": second.id})
        assert status == 409 and "is not running" in answer["error"], answer
        status, answer = s.post("/api/actions/release", {"queue": q.name, "job_id": first.id})
        assert status == 200 and answer == {"queue": q.name, "job_id": first.id, "attempt": 2, "owner_pid": p2.pid,
                                            "killed": p2.pid, "outcome": "retry"}, answer
        assert p2.wait(30) == -9
        d = q.fetch(timeout=10)
        assert (d.id, d.attempt) == (first.id, 3)
        with pytest.raises(shmq.Empty):  # the lane's gate: b waits for a
            q.fetch(timeout=0.2)
        d.ack()
        d = q.fetch(timeout=10)
        assert (d.id, d.attempt) == (second.id, 1)
        d.ack()
        audited = [json.loads(line) for line in open(os.path.join(qpath, "dashboard-audit.log"))]
        assert [(a["action"], "error" in a["outcome"]) for a in audited] == [
            ("release", True), ("release", True), ("release", False)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
