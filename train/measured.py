"""Where one run stands against its recipe's measured distribution (issue 12): the band report.md quotes.

`<recipe>_recipe_spread.json` beside this file holds a shipped recipe's measured runs: written by `edge-spread
--write-expected` (which keeps the keys it does not compute: data, cv, source), asserted by the slow reproduction
test (tests/test_spread.py), quoted here. A run is a draw from that distribution only when it trains what was
measured: the preset with no recipe field overridden, on the same images.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def band(recipe: str) -> dict[str, Any] | None:
    """The recipe's measured distribution, or None where nothing was measured (seed, quick, a new recipe)."""
    path = Path(__file__).with_name(f"{recipe}_recipe_spread.json")
    return json.loads(path.read_text()) if path.is_file() else None


def _why_not_a_draw(summary: dict[str, Any], b: dict[str, Any]) -> str:
    """'' when the run trains what `b` measured; else the reason, for the reader of report.md."""
    if summary.get("overrides"):
        return "overrides the preset (" + ", ".join(summary["overrides"]) + ")"
    data = b.get("data", {})
    images = sum(v for k, v in summary.get("counts", {}).items() if k in ("train", "val", "test"))
    if data and (images != data.get("images") or list(summary["labels"]) != list(data.get("classes", []))):
        return f"trains other data ({images} images of {', '.join(summary['labels'])})"
    return ""


def band_text(summary: dict[str, Any]) -> str:
    """report.md's paragraph on the recipe's distribution, and whether this run is a draw from it; '' if none."""
    b = band(summary["recipe"])
    if not b or not b.get("measured"):
        return ""
    data = b.get("data", {})
    on = f" on {data['name']} ({data['images']:,} images)" if data else ""
    text = (f"The `{summary['recipe']}` recipe as it ships, measured{on}: its INT8 model's single-pass test accuracy "
            f"averaged {b['int8_accuracy_mean']:.2%} over {b['runs']} runs on one split ({b['min']:.2%}-"
            f"{b['max']:.2%}; {b.get('grid', 'seeds x numerics')})")
    cv = b.get("cv", [])
    if cv:
        text += (f"; {cv[0]['folds']}-fold cross-validation, every image tested once, pooled "
                 + " and ".join(f"{c['pooled']:.2%} ({c['settings']})" for c in cv))
    why = _why_not_a_draw(summary, b)
    if why:
        return text + f". This run {why}, so it is not a draw from that distribution."
    acc = summary["evaluation"]["plain"]["accuracy"]
    where = ("inside" if b["min"] <= acc <= b["max"] else "below" if acc < b["min"] else "above")
    return (text + f". This run trains the same recipe on the same images: its plain (float) accuracy "
            f"{acc:.2%} is {where} the runs' range (the INT8 model lands within ~0.3 pp of its float twin).")
