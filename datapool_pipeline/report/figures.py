"""Plotly figures of a report, drawn from report.json (and the 2D points table)."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

OURS, RANDOM = "#1f6fd1", "#f28e2b"
PREVIOUS, THIS_RUN, CANDIDATE = "#8c8c8c", "#1f6fd1", "#5b9ee8"
# Static (PDF) view: at most this many points per group, a seeded subsample (the HTML shows all).
STATIC_POINTS_MAX = 20_000
# Interactive view: WebGL above this many points, SVG below (SVG needs no GPU and is exact).
WEBGL_ABOVE = 20_000

# (group, legend label, colour, opacity, size, symbol): unselected candidates faint and hollow.
GROUPS = [
    ("previous", "datapool before this run", PREVIOUS, 0.6, 5, "circle"),
    ("candidate", "new, not selected", CANDIDATE, 0.5, 5, "circle-open"),
    ("this_run", "selected in this run", THIS_RUN, 0.95, 6, "circle"),
]


def _layout(fig: go.Figure, title: str | None, **kw: Any) -> go.Figure:
    """Common look; figures for the PDF have no title (the PDF's headings say it) and larger text."""
    fig.update_layout(
        title={"text": title, "x": 0.01, "font": {"size": 18}} if title else None,
        template="plotly_white",
        margin={"l": 70, "r": 20, "t": 60 if title else 30, "b": 60},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0.0},
        font={"family": "DejaVu Sans, Arial, sans-serif", "size": 12 if title else 16},
    )
    fig.update_layout(**kw)
    return fig


def distances_figure(report: dict[str, Any]) -> go.Figure:
    """Histograms, ours vs the random baseline of the same size, on shared bins."""
    panels = [
        ("coverage of the new data", report["coverage"]["distances"]),
        ("distance to the datapool before", report["distances"]["to_datapool_before"]),
        ("nearest neighbour within the tag", report["distances"]["nearest_in_tag"]),
    ]
    fig = make_subplots(rows=3, cols=1, subplot_titles=[p[0] for p in panels], vertical_spacing=0.12)
    for row, (_, comp) in enumerate(panels, start=1):
        for name, colour in (("ours", OURS), ("random", RANDOM)):
            hist = comp[name]["histogram"]
            edges = np.asarray(hist["edges"])
            fig.add_trace(
                go.Bar(
                    x=(edges[:-1] + edges[1:]) / 2, y=hist["counts"], width=np.diff(edges),
                    name="our selection" if name == "ours" else "random selection (same size)",
                    marker_color=colour, opacity=0.6, showlegend=row == 1, legendgroup=name,
                ),
                row=row, col=1,
            )  # fmt: skip
        fig.update_yaxes(title_text="samples", row=row, col=1)
        if not comp["ours"]["count"] and not comp["random"]["count"]:
            axis = "" if row == 1 else str(row)
            fig.add_annotation(text="no values (e.g. the datapool was empty before this run)", showarrow=False,
                               xref=f"x{axis} domain", yref=f"y{axis} domain", x=0.5, y=0.5, font={"size": 15})
    fig.update_xaxes(title_text="distance", row=3, col=1)
    fig.update_annotations(font_size=17)
    return _layout(fig, None, barmode="overlay", legend={"orientation": "h", "y": 1.08, "x": 0.0})


def _hover(df: pl.DataFrame) -> list[str]:
    return [
        f"{k}<br>frame {f}" if f is not None and f >= 0 else str(k)
        for k, f in zip(df["raw_key"].to_list(), df["frame_index"].to_list(), strict=True)
    ]


def embedding_figure(points: pl.DataFrame, report: dict[str, Any], *, interactive: bool) -> go.Figure:
    """The datapool in 2D: previous samples grey, this run's blue, unselected candidates faint."""
    fig = go.Figure()
    for group, label, colour, opacity, size, symbol in GROUPS:
        df = points.filter(pl.col("group") == group)
        if not interactive and df.height > STATIC_POINTS_MAX:
            df = df.sample(STATIC_POINTS_MAX, seed=0)
        kind = go.Scattergl if interactive and points.height > WEBGL_ABOVE else go.Scatter
        fig.add_trace(
            kind(
                x=df["x"].to_numpy(), y=df["y"].to_numpy(), mode="markers", name=f"{label} ({df.height})",
                marker={"color": colour, "opacity": opacity, "size": size, "symbol": symbol},
                text=_hover(df) if interactive else None,
                hovertemplate="%{text}<extra>" + label + "</extra>" if interactive else None,
                hoverinfo=None if interactive else "skip", meta=group,
            )
        )  # fmt: skip
    ratio = report["embedding_2d"]["explained_variance_ratio"]
    fig.update_xaxes(title_text=f"PC 1 ({ratio[0]:.0%} of variance)", zeroline=False)
    fig.update_yaxes(title_text=f"PC 2 ({ratio[1]:.0%} of variance)", zeroline=False)
    title = f"Embedding view of the datapool after tag {report['tag']} (PCA)" if interactive else None
    return _layout(fig, title)


def timeline_figure(report: dict[str, Any]) -> go.Figure | None:
    """One row per video: its length, and a tick at every picked frame."""
    videos = [f for f in report["per_file"] if "selected_times_s" in f][:40]
    if not videos:
        return None
    fig = go.Figure()
    names = [v["key"] if len(v["key"]) <= 40 else "…" + v["key"][-39:] for v in videos]
    for name, v in zip(names, videos, strict=True):
        fig.add_trace(go.Scatter(x=[0, v["duration_s"]], y=[name, name], mode="lines", showlegend=False,
                                 line={"color": "#d6d6d6", "width": 10}, hoverinfo="skip"))
    fig.add_trace(
        go.Scatter(
            x=[t for v in videos for t in v["selected_times_s"]],
            y=[n for n, v in zip(names, videos, strict=True) for _ in v["selected_times_s"]],
            mode="markers", name="picked frame", marker={"symbol": "line-ns-open", "size": 14, "color": THIS_RUN,
                                                         "line": {"width": 2}},
        )
    )  # fmt: skip
    fig.update_xaxes(title_text="time in video (s)")
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, None, height=max(260, 120 + 40 * len(videos)))
