# SPDX-License-Identifier: Apache-2.0
"""Charts of the last hour as inline SVG, drawn on the server (no script
library): one line chart per measure, with its axis labels."""

from __future__ import annotations

import html
import time

_W, _H, _PAD = 360, 110, 28
_COLOURS = ("#2563eb", "#16a34a", "#dc2626", "#9333ea")


def duration(ns) -> str:
    if ns is None:
        return "-"
    ns = float(ns)
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.0f} ns"


def size(n) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _compact(value: float) -> str:
    for suffix, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _ago(seconds: float) -> str:
    return f"-{seconds / 60:.0f} min" if seconds >= 120 else f"-{seconds:.0f} s"


def line_chart(title: str, samples: list[dict], keys: tuple[str, ...], unit: str) -> str:
    """An SVG line chart of `keys` of the samples: the last hour, or since
    the first sample when the dashboard has run for less (at least a minute)."""
    now = time.time()
    span = min(3600.0, max(60.0, now - samples[0]["t"])) if samples else 3600.0
    top = max([s[k] for s in samples for k in keys] + [0.0])
    top = top * 1.1 if top > 0 else 1.0
    parts = [f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{_PAD}" y="12" class="chart-title">{html.escape(title)}</text>',
             f'<line x1="{_PAD}" y1="{_H - 16}" x2="{_W - 4}" y2="{_H - 16}" class="axis"/>',
             f'<text x="2" y="22" class="tick">{_compact(top)}</text><text x="2" y="{_H - 16}" class="tick">0</text>',
             f'<text x="{_PAD}" y="{_H - 2}" class="tick">{_ago(span)}</text>'
             f'<text x="{_W - 40}" y="{_H - 2}" class="tick">now</text>']
    legend_x = _PAD + 90
    for i, key in enumerate(keys):
        points = []
        for s in samples:
            x = _PAD + (_W - 4 - _PAD) * (1 - (now - s["t"]) / span)
            y = (_H - 16) - (_H - 36) * (s[key] / top)
            points.append(f"{x:.1f},{y:.1f}")
        colour = _COLOURS[i % len(_COLOURS)]
        if points:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(points)}"/>')
        label = key.replace("_", " ")
        parts.append(f'<text x="{legend_x:.0f}" y="12" class="legend" fill="{colour}">{html.escape(label)}</text>')
        legend_x += 5.5 * len(label) + 12
    if not samples:
        parts.append(f'<text x="{_W / 2 - 70}" y="{_H / 2}" class="tick">collecting (a point every 5 s)</text>')
    parts.append(f'<text x="{_PAD + 60}" y="{_H - 2}" class="tick">{html.escape(unit)}</text></svg>')
    return "".join(parts)


def queue_charts(samples: list[dict]) -> str:
    return (line_chart("throughput", samples, ("enqueued", "done", "failed"), "jobs/s")
            + line_chart("latency p50", samples, ("wait_p50_ms", "run_p50_ms"), "ms")
            + line_chart("backlog", samples, ("depth", "in_flight"), "jobs"))
