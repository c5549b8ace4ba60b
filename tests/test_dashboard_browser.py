# SPDX-License-Identifier: Apache-2.0
"""The dashboard in a real browser: the system's Chromium, headless, driven
by Playwright (its Python package only; .ci/run installs chromium with apt).
Against a live queue with a worker process running: the numbers shown equal
q.stats(), every page loads (screenshots in tests/artifacts/dashboard/),
retry on a dead job makes it run, a bulk purge shows its count and waits for
the confirmation, read-only mode shows no action and refuses one sent
anyway, and without its token the dashboard answers nothing."""

from __future__ import annotations

import os
import shutil
import time

import pytest

pytest.importorskip("starlette", reason="the dashboard extra: pip install -e '.[test]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="the test extra: pip install -e '.[test]'")

from dashboard_server import Server  # noqa: E402
from test_app import app_module, worker_process  # noqa: E402

from shmq.dashboard import asgi_app  # noqa: E402

ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts", "dashboard")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install -y chromium (.ci/run does)")

TASKS = """
@app.task(retries=0)
def resize(n):
    return n * 2


@app.task(retries=0)
def flaky(marker):
    if not os.path.exists(marker):
        raise ValueError("the marker file is not there yet")
    return "ran"


@app.task(retries=0)
def broken(n):
    raise KeyError(f"user {n}")
"""


def wait_until(predicate, timeout: float = 30.0, what: str = "", page=None):
    """Polls; with a page, waits through Playwright so that its events (a dialog) are handled meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            assert value, f"not within {timeout} s: {what}"
            return value
        if page is not None:
            page.wait_for_timeout(50)
        else:
            time.sleep(0.05)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def shot(page, name: str) -> None:
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}.png"), full_page=True)


def test_pages_numbers_retry_and_purge_with_a_live_worker(tmp_path, browser):
    marker = str(tmp_path / "marker")
    with app_module(tmp_path, TASKS) as (module, app):
        for n in range(5):
            module.resize.enqueue(n)
        module.flaky.enqueue(marker)
        for n in range(3):
            module.broken.enqueue(n)
        q = app.queue
        server = None
        with worker_process(tmp_path, module):
            wait_until(lambda: q.stats()["done"] == 5 and q.stats()["dead_letters"] == 4, what="the worker ran the jobs")
            server = Server(asgi_app(q.path))
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                dialogs = []

                # Overview: the numbers are q.stats()'s.
                page.goto(server.url + "/")
                stats = q.stats()
                for key in ("enqueued", "done", "failed", "dead", "depth", "in_flight", "consumers", "dead_letters"):
                    shown = page.locator(f'[data-live="{q.name}.{key}"]').first.inner_text()
                    assert shown.replace(",", "") == str(stats[key]), (key, shown, stats[key])
                assert page.locator("svg.chart").count() == 3
                shot(page, "overview")

                for url, name, expect in (("/queues", "queues", q.name), (f"/queues/{q.name}", "queue", "Lanes"),
                                          (f"/jobs?queue={q.name}", "jobs", ".resize"), ("/processes", "processes", "worker"),
                                          ("/log", "log", "segment_bytes"), (f"/dead?queue={q.name}", "dead", "KeyError")):
                    response = page.goto(server.url + url)
                    assert response.status == 200, url
                    assert expect in page.content(), (url, expect)
                    shot(page, name)

                # A dead job's detail: its arguments behind a click, its error and traceback.
                page.goto(server.url + f"/jobs?queue={q.name}&state=dead&task={module.broken.name}")
                page.locator("#jobs tr[data-job] a").first.click()
                page.wait_for_selector("#job")
                assert "KeyError" in page.content() and "Traceback" in page.content()
                assert not page.locator("#body").is_visible()
                page.locator("details summary", has_text="arguments").click()
                assert page.locator("#body").is_visible() and f'"{module.broken.name}"' in page.locator("#body").inner_text()
                shot(page, "job")

                # The worker's pid is on the processes page, as a worker holding the queue.
                page.goto(server.url + "/processes")
                assert page.locator("tr[data-pid] td:nth-child(3)", has_text="worker").count() >= 1

                # Retry a dead job from its row: it runs (the marker now lets it succeed).
                page.goto(server.url + f"/dead?queue={q.name}")
                flaky_row = page.locator("#dead tr[data-job]", has_text="flaky")
                assert flaky_row.count() == 1
                open(marker, "w").close()
                flaky_row.locator('button[data-action="dead-retry"]').click()
                wait_until(lambda: q.stats()["done"] == 6, what="the retried job ran")
                assert len(q.dead_letters) == 3

                # Purge all matching: the count is shown and nothing happens until it is confirmed.
                page.once("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
                page.goto(server.url + f"/dead?queue={q.name}")
                group = page.locator("#dead-groups tr", has_text="KeyError")
                group.locator('button[data-action="dead-purge"]').click()
                wait_until(lambda: dialogs, 10, "the confirmation", page)
                assert dialogs == ["Purge 3 dead job(s) (all matching)?"]
                page.wait_for_timeout(300)
                assert len(q.dead_letters) == 3  # dismissed: nothing purged
                page.once("dialog", lambda d: (dialogs.append(d.message), d.accept()))
                group.locator('button[data-action="dead-purge"]').click()
                wait_until(lambda: len(q.dead_letters) == 0, 10, "the purge after confirming", page)
                page.wait_for_selector("#flash:not([hidden])")
                assert "purged" in page.locator("#flash").inner_text()
                shot(page, "dead-after-purge")
                page.close()
            finally:
                server.stop()


def test_read_only_and_token_in_the_browser(tmp_path, browser, make_queue, qpath):
    q = make_queue(retries=0)
    q.enqueue(["app.broken", [1], {}])
    q.fetch(timeout=5).fail(KeyError("x"), retry=False)
    read_only = Server(asgi_app(qpath, read_only=True))
    token = "browser-test-token-0123456789"
    guarded = Server(asgi_app(qpath, token=token))
    try:
        page = browser.new_page()
        page.goto(read_only.url + f"/dead?queue={q.name}")
        assert page.locator("#read-only").inner_text() == "read-only"
        assert page.locator("button[data-action]").count() == 0
        answer = page.evaluate("""async (name) => {
            const csrf = document.querySelector('meta[name="csrf-token"]').content;
            const r = await fetch('/api/actions/dead-purge', {method: 'POST', headers: {'Content-Type': 'application/json',
                'X-Shmq-Csrf': csrf}, body: JSON.stringify({queue: name, ids: [0]})});
            return [r.status, (await r.json()).error];
        }""", q.name)
        assert answer[0] == 403 and "read-only" in answer[1]
        assert len(q.dead_letters) == 1

        response = page.goto(guarded.url + "/")
        assert response.status == 401 and "needs its token" in page.content()
        response = page.goto(guarded.url + f"/?token={token}")  # sets the cookie, then the page
        assert response.status == 200 and q.name in page.content()
        assert page.goto(guarded.url + "/queues").status == 200  # the cookie carries it on
        page.close()
    finally:
        read_only.stop()
        guarded.stop()
