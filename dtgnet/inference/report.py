"""``dtgnet predict --html``: one self-contained page (no network: thumbnails inline as JPEG, plots as SVG)
with, per video, a strip of thumbnails and its class probabilities over time (per window) or its top
classes (video level)."""
from __future__ import annotations

import base64
import html

import numpy as np

from .stream import VideoResult

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
PLOT_W, PLOT_H, PAD = 640, 180, 36
MAX_VIDEOS = 500
"""Videos shown in one page (a page of thousands does not open); the JSON lines hold them all."""

STYLE = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}
h1{font-size:22px} h2{font-size:15px;margin:22px 0 4px;word-break:break-all}
.meta{color:#555;font-size:13px;margin-bottom:6px} .err{color:#b00020;font-size:13px}
.strip{display:flex;gap:3px;flex-wrap:wrap;margin:4px 0} .strip figure{margin:0;font-size:10px;color:#666;text-align:center}
.strip img{width:80px;height:80px;display:block;border-radius:2px}
svg text{font-size:11px;fill:#333} .legend span{display:inline-block;margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:12px;height:3px;margin-right:4px;vertical-align:middle}"""


def _timeline_svg(result: VideoResult, classes: list[str], shown: list[int]) -> str:
    """Probability of each class in ``shown`` at each window's centre, as lines over time."""
    probs = result.outputs["probs"]  # (windows, K)
    centres = np.array([(s[0] + s[1]) / 2 for s in result.plan.spans])
    end = max(result.plan.duration or 1.0, 1e-6)
    w, h = PLOT_W - 2 * PAD, PLOT_H - 2 * PAD

    def xy(t, p):
        return f"{PAD + w * t / end:.1f},{PAD + h * (1 - p):.1f}"

    parts = [f'<svg width="{PLOT_W}" height="{PLOT_H}" role="img">',
             f'<rect x="{PAD}" y="{PAD}" width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/>']
    for p in (0.0, 0.5, 1.0):
        y = PAD + h * (1 - p)
        parts.append(f'<line x1="{PAD}" x2="{PAD + w}" y1="{y}" y2="{y}" stroke="#e4e4e4"/>'
                     f'<text x="{PAD - 6}" y="{y + 4}" text-anchor="end">{p:.1f}</text>')
    for k in range(5):
        t = end * k / 4
        label = f"{t:.0f}" if end >= 10 else f"{t:.1f}"
        parts.append(f'<text x="{PAD + w * k / 4:.1f}" y="{PAD + h + 16}" text-anchor="middle">{label} s</text>')
    for colour, c in zip(COLOURS, shown):
        pts = " ".join(xy(t, p) for t, p in zip(centres, probs[:, c]))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        if len(centres) == 1:
            parts.append(f'<circle cx="{xy(centres[0], probs[0, c]).split(",")[0]}" '
                         f'cy="{xy(centres[0], probs[0, c]).split(",")[1]}" r="3" fill="{colour}"/>')
    parts.append("</svg>")
    legend = "".join(f'<span><i style="background:{col}"></i>{html.escape(classes[c])}</span>'
                     for col, c in zip(COLOURS, shown))
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def _bars_svg(probs: np.ndarray, classes: list[str], shown: list[int]) -> str:
    """Horizontal bars of the top classes' probabilities (a video-level result)."""
    row, label_w = 22, 220
    parts = [f'<svg width="{PLOT_W}" height="{row * len(shown) + 8}" role="img">']
    for i, c in enumerate(shown):
        y = 4 + i * row
        width = (PLOT_W - label_w - 60) * float(probs[c])
        parts.append(f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end">{html.escape(classes[c])}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{width:.1f}" height="14" fill="{COLOURS[i % 6]}"/>'
                     f'<text x="{label_w + width + 6:.1f}" y="{y + 14}">{float(probs[c]):.3f}</text>')
    return "".join(parts) + "</svg>"


def _strip(result: VideoResult) -> str:
    figures = []
    for row, jpeg in result.thumbs:
        span = result.plan.spans[row]
        when = f"{span[0]:.1f}–{span[1]:.1f} s" if span else ""
        data = base64.b64encode(jpeg).decode()
        figures.append(f'<figure><img alt="frame {html.escape(when)}" src="data:image/jpeg;base64,{data}">'
                       f'<figcaption>{when}</figcaption></figure>')
    return f'<div class="strip">{"".join(figures)}</div>'


def render_html(results: list[VideoResult], classes: list[str], title: str, subtitle: str, top: int = 5) -> str:
    """The page: a header, then per video its thumbnails and plot (or its error)."""
    sections = []
    for r in results[:MAX_VIDEOS]:
        head = f"<h2>{html.escape(r.plan.path)}</h2>"
        if r.reason:
            sections.append(f'{head}<div class="err">not read: {html.escape(r.reason)}</div>')
            continue
        probs = r.outputs["probs"]  # (rows, K)
        overall = probs.mean(0)
        duration = f"{r.plan.duration:.1f} s, " if r.plan.duration else ""
        best = classes[int(overall.argmax())]
        meta = (f'<div class="meta">{duration}{r.plan.frames} frames; top: <b>{html.escape(best)}</b> '
                f"({float(overall.max()):.3f})</div>")
        shown = list(np.argsort(-overall, kind="stable")[:min(top, len(COLOURS))])
        if len(probs) > 1:  # a timeline: the classes that lead any window, then the overall top ones
            leaders = list(dict.fromkeys(int(c) for c in probs.argmax(1)))
            shown = list(dict.fromkeys(leaders + [int(c) for c in shown]))[:len(COLOURS)]
            plot = _timeline_svg(r, classes, shown)
        else:
            plot = _bars_svg(probs[0], classes, shown)
        sections.append(head + meta + _strip(r) + plot)
    more = (f"<p>{len(results) - MAX_VIDEOS} more videos are in the JSON lines output, not on this page.</p>"
            if len(results) > MAX_VIDEOS else "")
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<div class="meta">{html.escape(subtitle)}</div>{"".join(sections)}{more}</body></html>')
