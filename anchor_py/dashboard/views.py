"""What the dashboard's pages show: the Jinja2 templates with their filters (the shared wording of
anchor_py.formatting) and the geometry of the throughput chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from starlette.templating import Jinja2Templates

from anchor_py import admin
from anchor_py.formatting import (
    format_age,
    format_ago,
    format_attempts,
    format_duration,
    format_time,
    snooze_text,
    state_label,
)

TEMPLATES = Path(__file__).parent / "templates"


def state_class(state: str) -> str:
    return "state-" + state.replace("_", "-")


def page_templates() -> Jinja2Templates:
    """The page templates, with the filters they format values through."""
    templates = Jinja2Templates(directory=str(TEMPLATES))
    env = templates.env
    env.filters["ago"] = format_ago
    env.filters["age"] = format_age
    env.filters["utc"] = format_time
    env.filters["duration"] = format_duration
    env.filters["state_class"] = state_class
    env.filters["state_label"] = state_label
    env.filters["snooze"] = snooze_text
    env.filters["pretty_json"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, sort_keys=True)
    env.globals["attempts"] = format_attempts
    env.globals["STATES"] = admin.STATES
    return templates


def throughput_chart(points: list[admin.ThroughputPoint], width: int = 720, height: int = 160) -> dict[str, Any]:
    """Bar geometry for the inline SVG chart (stacked: succeeded, failed, cancelled per minute)."""
    top = max((p.total for p in points), default=0)
    scale_top = max(top, 1)
    left, bottom = 36, 18
    plot_w, plot_h = width - left - 4, height - bottom - 6
    slot = plot_w / max(len(points), 1)
    bars = []
    for i, p in enumerate(points):
        x = left + i * slot + 1
        y = float(6 + plot_h)
        segments = []
        for kind, value in (("succeeded", p.succeeded), ("failed", p.failed), ("cancelled", p.cancelled)):
            h = plot_h * value / scale_top
            if value:
                y -= h
                segments.append({"kind": kind, "y": round(y, 1), "h": round(h, 1)})
        bars.append({
            "x": round(x, 1), "w": round(max(slot - 2, 1), 1), "segments": segments,
            "title": f"{format_time(p.minute)[11:16]} UTC: {p.succeeded} succeeded, {p.failed} failed, "
                     f"{p.cancelled} cancelled",
        })
    labels = []
    if points:
        last = len(points) - 1
        for i, anchor in ((0, "start"), (last // 2, "middle"), (last, "end")):
            x = left + i * slot + (0 if anchor == "start" else slot if anchor == "end" else slot / 2)
            labels.append({"x": round(x, 1), "anchor": anchor, "text": format_time(points[i].minute)[11:16]})
    return {
        "width": width, "height": height, "left": left, "top_y": 6, "base_y": 6 + plot_h, "max": top,
        "bars": bars, "labels": labels, "total": sum(p.total for p in points),
    }
