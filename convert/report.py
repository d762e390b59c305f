"""The human side of a convert report: the stdout table and what to try when a variant fails."""
from __future__ import annotations

from .check import ERROR, FAIL

INT8_ADVICE = (
    "INT8 lost more accuracy than --max-drop allows. Things to try, cheapest first:\n"
    "  - check the calibration images look like deployment photos (--calib-data DIR); on the default bundle "
    "more of them (--calib-size 1000), another --seed or --int8-io float changed nothing measurable\n"
    "  - keep the INT8 recipe on (bias correction and range repair are the defaults) and keep more of the "
    "network's start in float: --int8-float-layers 4 (costs a few % of speed)\n"
    "  - weights are already per-channel; train the Lite0 backbone "
    "(EfficientNet-Lite has no squeeze-excite/swish and quantises far better than B0)\n"
    "  - or deploy tflite-fp16 instead (half the fp32 size, ~no accuracy change)")


def _fmt(v, spec: str, missing: str = "-") -> str:
    return missing if v is None else format(v, spec)


def format_table(report: dict) -> str:
    ref = report.get("reference") or {}
    head = f"{'variant':<12} {'size MB':>8} {'accuracy':>9} {'drop pp':>8} {'agree':>7} {'max|Δp|':>9}  status"
    lines = [head, "-" * len(head)]
    if ref:
        lines.append(f"{'keras':<12} {ref['size_bytes'] / 1e6:>8.2f} {ref['accuracy'] * 100:>8.2f}% "
                     f"{'':>8} {'':>7} {'':>9}  reference")
    for name, r in report["variants"].items():
        c = r.get("check", {})
        size = r.get("size_bytes")
        acc = c.get("accuracy")
        lines.append(
            f"{name:<12} {_fmt(size and size / 1e6, '8.2f'):>8} "
            f"{(_fmt(acc * 100, '8.2f') + '%') if acc is not None else '-':>9} "
            f"{_fmt(c.get('drop_pp'), '+8.2f'):>8} {_fmt(c.get('agreement') and c['agreement'] * 100, '6.1f'):>7} "
            f"{_fmt(c.get('max_abs_dprob'), '9.2e'):>9}  {r['status']}"
            + ("" if r.get("installed") else "  (not installed" +
               ("; previous file kept)" if r.get("kept_previous") else ")")))
    if ref:
        lines.append(f"checked on {ref['n_images']} images ({ref['source']}); "
                     f"{ref['n_skipped']} unreadable skipped; max drop {report['config']['max_drop']} pp")
    return "\n".join(lines)


def advice(report: dict) -> list[str]:
    out = []
    for name, r in report["variants"].items():
        if r["status"] == ERROR:
            out.append(f"{name}: conversion failed: {r.get('error')}")
        elif r["status"] == FAIL and name == "tflite-int8":
            out.append(INT8_ADVICE)
        elif r["status"] == FAIL:
            out.append(f"{name}: dropped {r['check']['drop_pp']:.2f} pp (> {r['check']['max_drop_pp']}); "
                       "not installed")
    return out
