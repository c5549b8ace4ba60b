// SPDX-License-Identifier: Apache-2.0
// shmq dashboard: live numbers by polling /api/queues (paused while the tab
// is hidden), charts refreshed from the server, and the action buttons
// (JSON POSTs carrying the page's CSRF token; counts confirmed first).
"use strict";
(function () {
  const body = document.body;
  const base = body.dataset.base || "";
  const pollMs = 1000 * Number(body.dataset.poll || 2);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const status = document.getElementById("live-status");
  const flash = document.getElementById("flash");
  const previous = {};
  let lastCharts = 0;

  function fmt(n) { return typeof n === "number" ? n.toLocaleString("en-US") : String(n); }
  function dur(ns) {
    if (ns >= 1e9) return (ns / 1e9).toPrecision(3).replace(/\.?0+$/, "") + " s";
    if (ns >= 1e6) return (ns / 1e6).toPrecision(3).replace(/\.?0+$/, "") + " ms";
    if (ns >= 1e3) return (ns / 1e3).toPrecision(3).replace(/\.?0+$/, "") + " µs";
    return Math.round(ns) + " ns";
  }

  function show(message, bad) {
    flash.textContent = message;
    flash.className = bad ? "error" : "ok";
    flash.hidden = false;
  }

  async function poll() {
    if (document.hidden) return;  // paused while the tab is hidden
    if (!document.querySelector("[data-live], [data-charts]")) return;
    try {
      const r = await fetch(base + "/api/queues", {credentials: "same-origin"});
      if (!r.ok) throw new Error((await r.json()).error || r.statusText);
      const now = Date.now() / 1000;
      for (const q of await r.json()) {
        for (const el of document.querySelectorAll('[data-live^="' + CSS.escape(q.name) + '."]')) {
          const key = el.dataset.live.slice(q.name.length + 1);
          const v = q[key];
          if (v && typeof v === "object" && "p50" in v) el.textContent = dur(v.p50) + " / " + dur(v.p99) + " / " + dur(v.max);
          else if (v !== undefined) el.textContent = fmt(v);
        }
        const before = previous[q.name];
        if (before) {
          for (const el of document.querySelectorAll('[data-rate^="' + CSS.escape(q.name) + '."]')) {
            const key = el.dataset.rate.slice(q.name.length + 1);
            el.textContent = Math.max(0, (q[key] - before.q[key]) / (now - before.t)).toFixed(1) + "/s";
          }
        }
        previous[q.name] = {t: now, q: q};
      }
      if (Date.now() - lastCharts > 5000) {
        lastCharts = Date.now();
        for (const el of document.querySelectorAll("[data-charts]")) {
          const c = await fetch(base + "/fragments/charts/" + encodeURIComponent(el.dataset.charts));
          if (c.ok) el.innerHTML = await c.text();
        }
      }
      status.textContent = "live · " + new Date().toLocaleTimeString();
      status.className = "muted";
    } catch (e) {
      status.textContent = "not updating: " + e.message;
      status.className = "error";
    }
  }

  async function act(action, params) {
    const r = await fetch(base + "/api/actions/" + action, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-Shmq-Csrf": csrf},
      body: JSON.stringify(params),
    });
    const answer = await r.json();
    if (!r.ok) throw new Error(answer.error || r.statusText);
    return answer;
  }

  document.addEventListener("click", async function (event) {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    event.preventDefault();
    const d = button.dataset;
    const params = {queue: d.queue};
    if (d.ids) params.ids = d.ids.split(",").map(Number);
    if (d.pid) params.pid = Number(d.pid);
    if (d.jobId) params.job_id = Number(d.jobId);
    if (d.selected) params.ids = Array.from(document.querySelectorAll("input.select:checked")).map(x => Number(x.value));
    if (d.allMatching) { params.all_matching = true; params.task = d.task; params.error_type = d.errorType; }
    try {
      if (d.confirmCount) {  // show how many it touches, and ask
        const preview = await act("dead-preview", params);
        if (!preview.count) { show("nothing matches", true); return; }
        if (!window.confirm(d.confirmCount + " " + preview.count + " dead job(s)" + (params.all_matching ? " (all matching)" : "") + "?")) return;
        if (params.all_matching) params.expect = preview.count;
      } else if (d.confirm && !window.confirm(d.confirm)) {
        return;
      }
      button.disabled = true;
      const answer = await act(d.action, params);
      show(d.action + ": " + JSON.stringify(answer), false);
      setTimeout(function () { window.location.reload(); }, 800);
    } catch (e) {
      show(d.action + " refused: " + e.message, true);
      button.disabled = false;
    }
  });

  document.addEventListener("visibilitychange", function () { if (!document.hidden) poll(); });
  setInterval(poll, pollMs);
})();
