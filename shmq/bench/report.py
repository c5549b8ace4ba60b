# SPDX-License-Identifier: Apache-2.0
"""The suite's output: tables for the terminal, report.md, results.json and PNG charts.

Everything here works from the document the suite builds (suite.py), the same
one written as results.json, so a report can be made again from a results.json:

    python -m shmq.bench.report DIR      # DIR/results.json -> DIR/report.md and charts

A table is a dict: "title", "columns" (the first one names the row), "rows"
(each with "system", "status" ok | skipped | n/a | failed, "reason", "cells"
for display and the raw numbers), "notes". A chart is a dict: "file", "title",
"ylabel", "log", "groups" (labels along the x axis) and "series" (each with
"name", "values", and "lo"/"hi" for the min-max whiskers); None = no bar.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

__all__ = ["fmt_rate", "fmt_us", "fmt_ratio", "text_table", "markdown_table", "write_json", "write_markdown",
           "write_charts", "summary_table"]

# A system keeps its colour in every chart; shmq stands out.
COLOURS = {
    "shmq": "#d62728", "mp.Queue": "#1f77b4", "faster_fifo": "#2ca02c", "persist-queue": "#9467bd",
    "c-ring": "#7f7f7f", "rq": "#ff7f0e", "huey": "#8c564b", "pyzmq": "#17becf", "iceoryx2": "#bcbd22",
    "none": "#7f7f7f", "memory": "#1f77b4", "os": "#d62728", "interval": "#9467bd",
    "p50": "#1f77b4", "p99": "#ff7f0e", "p99.9": "#d62728",
}
STATUS_LABEL = {"skipped": "skipped", "n/a": "not run", "failed": "FAILED"}


# --------------------------------------------------------------------------- numbers


def fmt_rate(x: float | None) -> str:
    """A rate for people: 2.09 M, 242 K, 2,462, 3.2."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e5:
        return f"{x / 1e3:.0f} K"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def fmt_us(x: float | None) -> str:
    """A duration given in microseconds: 7.1 us, 412 us, 2.81 ms, 1.20 s."""
    if x is None:
        return "-"
    if x < 100:
        return f"{x:.1f} us"
    if x < 1000:
        return f"{x:.0f} us"
    if x < 1e6:
        return f"{x / 1e3:.2f} ms"
    return f"{x / 1e6:.2f} s"


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}x"
    if x >= 10:
        return f"{x:.1f}x"
    return f"{x:.2f}x"


# --------------------------------------------------------------------------- tables


def _row_cells(table: dict, row: dict) -> list[str]:
    if row.get("status", "ok") == "ok":
        return [str(c) for c in row["cells"]]
    reason = " ".join(str(row.get("reason", "")).split())
    return [row["cells"][0] if row.get("cells") else row["system"],
            f"{STATUS_LABEL.get(row['status'], row['status'])}: {reason}"] + [""] * (len(table["columns"]) - 2)


def text_table(table: dict) -> str:
    """The table as aligned text for the terminal (a row that did not run says why)."""
    cols = table["columns"]
    ok_rows = [_row_cells(table, r) for r in table["rows"] if r.get("status", "ok") == "ok"]
    widths = [max([len(c)] + [len(r[i]) for r in ok_rows]) for i, c in enumerate(cols)]
    widths[0] = max([widths[0]] + [len(_row_cells(table, r)[0]) for r in table["rows"]])
    align = table.get("align") or ("l" + "r" * (len(cols) - 1))

    def line(cells):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align)).rstrip()

    out = [f"== {table['title']} ==", line(cols), "-" * len(line(cols))]
    for row in table["rows"]:
        cells = _row_cells(table, row)
        if row.get("status", "ok") == "ok":
            out.append(line(cells))
        else:
            out.append(f"{cells[0].ljust(widths[0])}  {cells[1]}")
    out += [f"  {n}" for n in table.get("notes", [])]
    return "\n".join(out)


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown_table(table: dict, heading: str | None = "###") -> str:
    cols = table["columns"]
    align = table.get("align") or ("l" + "r" * (len(cols) - 1))
    out = []
    if heading:
        out += [f"{heading} {table['title']}", ""]
    out.append("| " + " | ".join(_md_escape(c) for c in cols) + " |")
    out.append("|" + "|".join("---" if a == "l" else "---:" for a in align) + "|")
    for row in table["rows"]:
        cells = _row_cells(table, row)
        if row.get("system") == "shmq" and row.get("status", "ok") == "ok" and table.get("bold_shmq", True):
            cells = [f"**{c}**" if c else c for c in cells]
        out.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    if table.get("notes"):
        out.append("")
        out += [f"- {_md_escape(n)}" for n in table["notes"]]
    return "\n".join(out)


SUMMARY_SYSTEMS = [("shmq", "shmq"), ("mp.Queue", "mp.Queue"), ("faster_fifo", "faster_fifo"),
                   ("pyzmq", "pyzmq"), ("iceoryx2", "iceoryx2"), ("persist-queue", "persist-queue"), ("rq", "RQ"), ("huey", "Huey"), ("c-ring", "C ring")]


def summary_table(doc: dict) -> dict:
    """The main table: one line per workload that has peers, each system's median and
    shmq's advantage over it from the same run."""
    lines: list[tuple[str, dict[str, dict], bool]] = []  # (label, system -> row, lower is better)
    w = doc["workloads"]
    for name in ("channel", "arrays", "jobs"):
        for t in w.get(name, {}).get("tables", []):
            cfg = t.get("config", {})
            if name == "channel":
                how = "one at a time" if cfg["batch"] == 1 else f"batches of {cfg['batch']}"
                who = "" if cfg["procs"] == 1 else f", {cfg['procs']}+{cfg['procs']} procs"
                size = f"{cfg['payload'] / 1024:g} KiB" if cfg["payload"] >= 1024 else f"{cfg['payload']} B"
                label = f"{size}, {how}{who}, msgs/s"
            elif name == "arrays":
                size = cfg["frame_bytes"]
                label = (f"numpy {size / 2**20:g} MiB frames, frames/s" if size % 2**20 == 0
                         else f"numpy {size:,} B frames, frames/s")
            else:
                label = "whole jobs, jobs/s"
            lines.append((label, {r["system"]: r for r in t["rows"]}, False))
    for t in w.get("latency", {}).get("tables", []):
        for rate in sorted({r["rate"] for r in t["rows"] if r.get("rate")}):
            rows = {r["system"]: r for r in t["rows"] if r.get("rate") == rate}
            lines.append((f"job latency p99 at {rate:,}/s", rows, True))
    present = [key for key, _ in SUMMARY_SYSTEMS if any(key in rows for _, rows, _ in lines)]
    columns = ["workload"] + [dict(SUMMARY_SYSTEMS)[k] for k in present]
    out_rows = []
    for label, rows, lower in lines:
        shmq = rows.get("shmq")
        base = shmq["median"] if shmq and shmq["status"] == "ok" else None
        cells = [label]
        for key in present:
            r = rows.get(key)
            if r is None:
                cells.append("")
            elif r["status"] == "skipped":
                cells.append("skipped")
            elif r["status"] == "n/a":
                cells.append("n/a")
            elif r["status"] != "ok":
                cells.append("FAILED")
            else:
                value = fmt_us(r["median"]) if lower else fmt_rate(r["median"])
                if key == "shmq" or base is None:
                    cells.append(value)
                elif key == "c-ring":
                    cells.append(f"{value} (shmq {100 * base / r['median']:.0f}%)")
                else:
                    ratio = r["median"] / base if lower else base / r["median"]
                    cells.append(f"{value} ({fmt_ratio(ratio).replace('x', '×')})")
        out_rows.append({"system": label, "status": "ok", "cells": cells})
    return {"title": "summary: medians of this run",
            "columns": columns, "align": "l" + "r" * (len(columns) - 1), "rows": out_rows, "bold_shmq": False,
            "notes": ["(N×): how many times better shmq did than that system in this run (its rate / theirs; "
                      "for latency, their p99 / shmq's)",
                      "msgs/s, frames/s, jobs/s: between separate processes, each one checked; 1+1 procs unless "
                      "noted; C ring: a shared-memory ring driven from C, no Python (the ceiling on this "
                      "machine), with the share of it shmq reaches"]}


# --------------------------------------------------------------------------- files


def write_json(doc: dict, path: Path) -> None:
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")


def _machine_lines(doc: dict) -> list[str]:
    m = doc["machine"]
    src = m.get("source") or {}
    shmq = f"shmq {m.get('shmq_version', '?')}"
    if src.get("commit"):
        shmq += f" (git {src['commit']}"
        shmq += f", uncommitted changes in {', '.join(src['uncommitted'])})" if src.get("uncommitted") else ")"
    lines = [f"{m['cpu']}, {m['cores']} cores ({m['usable_cpus']} usable), {m.get('memory', '?')} memory, "
             f"Linux {m['kernel']}, Python {m['python']}, numpy {m['numpy']}, {shmq}"]
    peers = ", ".join(f"{k} {v}" for k, v in (m.get("peers") or {}).items())
    if peers:
        lines.append(f"peers: {peers}")
    d = m.get("data_dir") or {}
    if d:
        probe = d.get("fdatasync_4k") or {}
        disk = f"; a 4 KiB append + fdatasync there takes {probe['median_us']:.0f} us (median)" if probe else ""
        lines.append(f"data directory: {d.get('fstype', '?')} on {d.get('source', '?')}{disk}")
    if m.get("loadavg_start"):
        lines.append("load average at the start: " + " ".join(f"{x:.2f}" for x in m["loadavg_start"]))
    return lines


def write_markdown(doc: dict, path: Path) -> None:
    """report.md: the machine, the summary table, then each workload's tables and charts."""
    drawn = [c for c in doc.get("charts", []) if c.get("path")]
    out = [f"# shmq bench, {doc['started'][:10]}", ""]
    out += [f"Command: `{doc['command']}`", ""]
    out += ["Machine: " + _machine_lines(doc)[0], ""]
    out += [f"- {line}" for line in _machine_lines(doc)[1:]]
    out += [f"- duration: {_fmt_duration(doc['duration_s'])}"
            + (" (--quick: short runs, numbers for a smoke test only)" if doc["settings"].get("quick") else "")]
    noisy = {w: v for w, v in doc.get("other_cpu", {}).items() if v.get("share", 0) > 0.05}
    if noisy:
        out.append("- **other processes were busy during " + ", ".join(
            f"{w} ({100 * v['share']:.0f}% of the machine)" for w, v in noisy.items())
            + "**: those numbers are less reliable")
    if doc.get("failed"):
        out.append("- **FAILED: " + "; ".join(doc["failed"]) + "**")
    out.append("")
    summary = doc.get("summary")
    if summary and summary["rows"]:
        out += ["## Summary", "", markdown_table(summary, heading=None), ""]
        first = drawn[0] if drawn else None
        if first:
            out += [f"![{first['title']}]({first['path']})", ""]
    for name, w in doc["workloads"].items():
        out += [f"## {name}", "", w["about"], ""]
        if w.get("status") == "failed":
            out += [f"**FAILED**: {w.get('error', '')}", ""]
        for n in w.get("notes", []):
            out.append(f"- {_md_escape(n)}")
        if w.get("notes"):
            out.append("")
        for t in w.get("tables", []):
            out += [markdown_table(t), ""]
        for c in doc.get("charts", []):
            if c["workload"] == name and c.get("path"):
                out += [f"![{c['title']}]({c['path']})", ""]
        if w.get("other_cpu"):
            v = w["other_cpu"]
            out += [f"Took {_fmt_duration(w['duration_s'])}; other processes used {v['other_cpu_s']:.1f} CPU-s "
                    f"meanwhile ({100 * v['share']:.1f}% of the machine).", ""]
    if doc.get("charts_skipped"):
        out += [f"Charts: {doc['charts_skipped']}", ""]
    out += ["## How the numbers are made", "",
            "Producers, consumers and workers are separate processes. Each configuration has a warm-up run "
            "(which also sizes the measured runs), then several measured runs, interleaved across systems so "
            "that a drift of the machine hits every system alike; a table gives the median with the min and "
            "max. Every consumer checks the count and the content of what it received (a lost, duplicated, "
            "reordered or corrupt message fails the run); every job counts itself. Ratios compare medians "
            "from this same run. `results.json` holds every run, warm-ups included. benchmarks/README.md in "
            "the source tree explains each benchmark in detail.", ""]
    path.write_text("\n".join(out))


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def write_charts(doc: dict, out_dir: Path) -> str | None:
    """Draws every chart of the document into out_dir (setting each one's "path");
    returns why there are none, or None."""
    try:
        import matplotlib
    except ImportError:
        return "skipped: matplotlib is not installed (pip install 'shmq[bench]')"
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    for chart in doc.get("charts", []):
        if not any(v is not None for s in chart["series"] for v in s["values"]):
            continue
        fig = _draw(plt, chart)
        fig.savefig(out_dir / chart["file"], dpi=110)
        plt.close(fig)
        chart["path"] = chart["file"]
    return None


def _draw(plt, chart: dict):
    from matplotlib.ticker import FuncFormatter

    groups, series = chart["groups"], [s for s in chart["series"] if any(v is not None for v in s["values"])]
    unit = chart.get("unit")
    fmt = fmt_us if unit == "us" else (lambda v: f"{v:.3g} s") if unit == "s" else fmt_rate
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.0 + 1.1 * len(groups) * max(1, len(series)) * 0.35), 4.2))
    for k, s in enumerate(series):
        xs = [g + (k - (len(series) - 1) / 2) * width for g in range(len(groups))]
        pts = [(x, v, lo, hi) for x, v, lo, hi in zip(xs, s["values"], s.get("lo") or s["values"],
                                                       s.get("hi") or s["values"]) if v is not None]
        if not pts:
            continue
        x, v, lo, hi = zip(*pts)
        err = [[max(0.0, a - b) for a, b in zip(v, lo)], [max(0.0, b - a) for a, b in zip(v, hi)]]
        ax.bar(x, v, width, label=s["name"], color=COLOURS.get(s.get("key", s["name"])), yerr=err, capsize=2,
               error_kw={"elinewidth": 0.8})
        for xi, vi, top in zip(x, v, hi):  # above the whisker
            ax.annotate(fmt(vi), (xi, max(vi, top)), textcoords="offset points", xytext=(0, 3), ha="center",
                        va="bottom", fontsize=6, rotation=90 if len(series) * len(groups) > 8 else 0)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel(chart["ylabel"])
    if chart.get("log"):
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * 4)  # room for the labels
    else:
        lo, hi = ax.get_ylim()
        ax.set_ylim(0, hi * 1.15)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _tick(v, unit)))
    ax.set_title(chart["title"], fontsize=10)
    ax.legend(fontsize=8, ncol=min(len(series), 5), loc="upper left", frameon=False)
    ax.grid(axis="y", alpha=0.3, which="both" if chart.get("log") else "major")
    if chart.get("caption"):
        fig.text(0.01, 0.01, chart["caption"], fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.04 if chart.get("caption") else 0, 1, 1))
    return fig


def _tick(v: float, unit: str | None) -> str:
    """An axis label: 100 K, 2.5 M, 10 us, 1 ms."""
    if v <= 0:
        return "0"
    if unit == "us":
        return f"{v:g} us" if v < 1e3 else f"{v / 1e3:g} ms" if v < 1e6 else f"{v / 1e6:g} s"
    if unit == "s":
        return f"{v:g} s"
    return f"{v / 1e6:g} M" if v >= 1e6 else f"{v / 1e3:g} K" if v >= 1e3 else f"{v:g}"


def main(argv: list[str] | None = None) -> int:
    """Makes report.md and the charts again from DIR/results.json."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m shmq.bench.report DIR   (a directory holding results.json)", file=sys.stderr)
        return 2
    out_dir = Path(argv[0])
    doc = json.loads((out_dir / "results.json").read_text())
    why = write_charts(doc, out_dir)
    doc["charts_skipped"] = why
    write_markdown(doc, out_dir / "report.md")
    print(f"{out_dir / 'report.md'}" + (f"; charts {why}" if why else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
