"""A benchmark result (the JSON of `run_benchmark`) as a text table, markdown, CSV, PNG plots, or a comparison.

matplotlib is imported only when plots are asked for, and its absence (the edge extra has none) skips them.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from trashcam.edge.bundle import atomic_write_bytes

from .environment import describe

# (header, how to read it from an entry, format)
COLUMNS = (
    ("variant", lambda e: e["name"], "{}"),
    ("threads", lambda e: e["threads"], "{}"),
    ("size MB", lambda e: e["size_mb"], "{:.2f}"),
    ("acc %", lambda e: None if e["accuracy"] is None else 100 * e["accuracy"], "{:.2f}"),
    ("drop pp", lambda e: e["drop_pp"], "{:+.2f}"),
    ("check", lambda e: e.get("check_status"), "{}"),  # edge-convert's verdict; auto never picks a FAIL
    ("invoke p50", lambda e: e["latency_ms"]["p50"], "ms"),
    ("invoke p99", lambda e: e["latency_ms"]["p99"], "ms"),
    ("vs baseline", lambda e: (e.get("baseline") or {}).get("invoke_ratio_p50"), "{:.3f}x"),
    ("e2e p50", lambda e: e["e2e_latency_ms"]["p50"], "ms"),
    ("e2e p99", lambda e: e["e2e_latency_ms"]["p99"], "ms"),
    ("fps", lambda e: e["fps"], "{:.1f}"),
    ("load ms", lambda e: e["load_ms"], "{:.0f}"),
    ("RSS MB", lambda e: e["peak_rss_mb"], "{:.0f}"),
)
CSV_FIELDS = ("name", "format", "runtime", "threads", "size_bytes", "accuracy", "macro_f1", "drop_pp", "load_ms",
              "first_invoke_ms", "fps", "invoke_fps", "e2e_over_invoke", "frame_over_invoke", "pipelined_over_invoke",
              "pipelined_streams", "peak_rss_mb",
              "baseline_rss_mb", "check_status")
STATS = ("mean", "std", "p50", "p90", "p99")


def _fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    if spec == "ms":  # tiny test models invoke in ~10 us: keep 3 significant digits below 1 ms
        return f"{value:.2f}" if value >= 1 else f"{value:.3g}"
    return spec.format(value)


def rows(result: dict) -> tuple[list[str], list[list[str]]]:
    cols = [c for c in COLUMNS if c[0] != "vs baseline" or result["config"].get("baseline")]
    return [c[0] for c in cols], [[_fmt(get(e), spec) for _, get, spec in cols] for e in result["variants"]]


def _grid(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, body)])


def _header_lines(result: dict) -> list[str]:
    d, ref = result["data"], result["reference"]
    out = [f"bundle {result['bundle']['path']} ({result['bundle'].get('backbone')})",
           f"on {describe(result['environment'])}",
           f"accuracy on {d['images']} images ({d['source']}: {d['path']}), float reference: "
           f"{ref.get('variant')} {_fmt(ref.get('accuracy') and 100 * ref['accuracy'], '{:.2f}')} %"
           + (f" ({ref['note']})" if ref.get("note") else ""),
           f"latency ms over {result['config']['runs']} runs after {result['config']['warmup']} warm-up, invoke "
           "and e2e timed interleaved; e2e = decode + resize + invoke + postprocess + temperature of image files"]
    if result["config"].get("baseline"):
        out.append(f"vs baseline = invoke p50 / the same variant's invoke p50 in {result['config']['baseline']}, "
                   "timed interleaved in the same process")
    return out


def fastest_deployable(result: dict) -> dict[int, dict]:
    """Per thread count, the deployable entry (not keras, check not FAILed) with the lowest e2e p50:
    what `edge-run --variant auto` picks from the recorded numbers."""
    best: dict[int, dict] = {}
    for e in result["variants"]:
        if e["format"] == "keras" or e.get("check_status") == "FAIL":
            continue
        t = e["threads"]
        if t not in best or e["e2e_latency_ms"]["p50"] < best[t]["e2e_latency_ms"]["p50"]:
            best[t] = e
    return dict(sorted(best.items()))


def _pick_line(result: dict) -> str | None:
    picks = fastest_deployable(result)
    if not picks:
        return None
    return "fastest deployable (edge-run --variant auto): " + "; ".join(
        f"{e['name']} @ {t} thr (e2e p50 / invoke p50: files {_fmt(e.get('e2e_over_invoke'), '{:.2f}')}x, "
        f"decoded frames {_fmt(e.get('frame_over_invoke'), '{:.2f}')}x; per frame as edge-run streams a folder"
        f"{_streams(e)} {_fmt(e.get('pipelined_over_invoke'), '{:.2f}')}x)"
        for t, e in picks.items())


def _streams(e: dict) -> str:
    n = e.get("pipelined_streams") or 1
    return f" ({n} single-thread interpreters)" if n > 1 else " (read ahead)"


def format_table(result: dict) -> str:
    head, body = rows(result)
    lines = _header_lines(result) + ["", _grid(head, body)]
    if _pick_line(result):
        lines.append(_pick_line(result))
    for s in result.get("skipped", []):
        lines.append(f"skipped {s['name']}: {s['reason']}")
    from .score_cost import console_lines
    return "\n".join(lines + console_lines(result))


def to_markdown(result: dict) -> str:
    head, body = rows(result)
    md = ["# edge-bench", "", *[f"- {ln}" for ln in _header_lines(result)], "",
          "| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    md += ["| " + " | ".join(r) + " |" for r in body]
    if _pick_line(result):
        md += ["", _pick_line(result)]
    for s in result.get("skipped", []):
        md.append(f"\nSkipped **{s['name']}**: {s['reason']}")
    from .score_cost import markdown_rows
    md += markdown_rows(result)
    return "\n".join(md) + "\n"


def to_csv(result: dict) -> str:
    buf = io.StringIO()
    fields = list(CSV_FIELDS) + [f"{k}_{s}_ms" for k in ("invoke", "e2e", "frame", "pipelined") for s in STATS]
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for e in result["variants"]:
        row = {k: e.get(k) for k in CSV_FIELDS}
        row.update({f"invoke_{s}_ms": e["latency_ms"][s] for s in STATS})
        row.update({f"e2e_{s}_ms": e["e2e_latency_ms"][s] for s in STATS})
        row.update({f"frame_{s}_ms": (e.get("frame_latency_ms") or {}).get(s) for s in STATS})
        row.update({f"pipelined_{s}_ms": (e.get("pipelined_latency_ms") or {}).get(s) for s in STATS})
        w.writerow(row)
    return buf.getvalue()


def write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_plots(result: dict, out_dir: str | Path) -> list[Path]:
    """latency.png (p50 bars, whiskers to p99, invoke and e2e) and accuracy_vs_size.png. [] without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = result["variants"]
    labels = [f"{e['name']}\n{e['threads']} thr" for e in entries]
    x = range(len(entries))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(entries) + 2), 4.5))
    for off, key, name in ((-0.2, "latency_ms", "invoke"), (0.2, "e2e_latency_ms", "end-to-end")):
        p50 = [e[key]["p50"] for e in entries]
        up = [e[key]["p99"] - e[key]["p50"] for e in entries]
        ax.bar([i + off for i in x], p50, width=0.4, yerr=[[0] * len(p50), up], capsize=3, label=f"{name} p50 (to p99)")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("ms per image")
    lo = min(e["latency_ms"]["p50"] for e in entries)
    if lo > 0 and max(e["e2e_latency_ms"]["p99"] for e in entries) / lo > 20:
        ax.set_yscale("log")  # a Keras float model can be 20x slower than the TFLite files; keep them readable
    ax.set_title(f"latency on {result['environment']['cpu'].get('model')}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = [out_dir / "latency.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    seen = set()
    for e in entries:
        if e["name"] in seen or e["accuracy"] is None:
            continue
        seen.add(e["name"])
        # a legend, not annotations: fp32 TFLite and ONNX have nearly the same size and would overprint
        ax.scatter(e["size_mb"], 100 * e["accuracy"], s=50, label=f"{e['name']} ({e['size_mb']:.1f} MB)",
                   marker="os^Dv*P"[len(seen) % 7])
    ax.set_xlabel("model file size (MB)")
    ax.set_ylabel(f"accuracy % ({result['data']['images']} images)")
    ax.set_title("accuracy vs size", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "accuracy_vs_size.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


# ---- comparing two runs ---------------------------------------------------------------------------------
COMPARE = (("e2e p50", lambda e: e["e2e_latency_ms"]["p50"]), ("e2e p99", lambda e: e["e2e_latency_ms"]["p99"]),
           ("invoke p50", lambda e: e["latency_ms"]["p50"]), ("fps", lambda e: e["fps"]),
           ("RSS MB", lambda e: e["peak_rss_mb"]), ("size MB", lambda e: e["size_mb"]))


def _ratio(a, b) -> float | None:
    return None if a in (None, 0) or b is None else round(b / a, 3)


def compare(a: dict, b: dict) -> dict:
    """Per (variant, threads) in both runs: B/A ratios of latency, fps, RSS, size, and the accuracy change (pp)."""
    ia = {(e["name"], e["threads"]): e for e in a["variants"]}
    ib = {(e["name"], e["threads"]): e for e in b["variants"]}
    both = [k for k in ia if k in ib]
    out = []
    for k in both:
        ea, eb = ia[k], ib[k]
        row = {"name": k[0], "threads": k[1]}
        for name, get in COMPARE:
            row[name] = {"a": get(ea), "b": get(eb), "ratio": _ratio(get(ea), get(eb))}
        acc = (ea["accuracy"], eb["accuracy"])
        row["accuracy_change_pp"] = None if None in acc else round((acc[1] - acc[0]) * 100, 4)
        out.append(row)
    return {"rows": out, "only_a": [list(k) for k in ia if k not in ib], "only_b": [list(k) for k in ib if k not in ia]}


def format_compare(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> str:
    cmp = compare(a, b)
    head = ["variant", "threads"] + [f"{n} B/A" for n, _ in COMPARE] + ["acc Δpp"]
    body = []
    for r in cmp["rows"]:
        body.append([r["name"], str(r["threads"])] + [_fmt(r[n]["ratio"], "{:.3f}") for n, _ in COMPARE]
                    + [_fmt(r["accuracy_change_pp"], "{:+.2f}")])
    lines = [f"A = {name_a}: {describe(a['environment'])}", f"B = {name_b}: {describe(b['environment'])}",
             "ratios are B/A: latency, RSS and size < 1 and fps > 1 mean B is better", "", _grid(head, body)]
    for side, key in ((name_a, "only_a"), (name_b, "only_b")):
        if cmp[key]:
            lines.append(f"only in {side}: " + ", ".join(f"{n}@{t}" for n, t in cmp[key]))
    return "\n".join(lines)
