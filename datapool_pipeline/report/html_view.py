"""embedding_view.html: the report's 2D embedding view, interactive and self-contained (plotly.js inlined)."""

from __future__ import annotations

import html
from typing import Any

import polars as pl

from datapool_pipeline.report.figures import embedding_figure

DIV_ID = "embedding-view"


def embedding_view_html(report: dict[str, Any], points: pl.DataFrame) -> str:
    fig = embedding_figure(points, report, interactive=True)
    fig.update_layout(height=760)
    plot = fig.to_html(
        include_plotlyjs=True, full_html=False, div_id=DIV_ID, config={"displaylogo": False, "responsive": True}
    )
    pool = report["datapool"]
    counts = report["embedding_2d"]["points"]
    title = f"{report['dataset']} · tag {report['tag']}"
    summary = (
        f"Datapool {pool['size_before']} → {pool['size_after']} samples ({pool['samples_added']} added). "
        f"Grey: the {counts['previous']} samples already in the datapool; blue: the {counts['this_run']} "
        f"selected by this run; faint: the {counts['candidate']} new samples it did not select. "
        "Hover a point for its file and frame; drag to zoom, double-click to reset. "
        f"Projection: PCA of the {report['embedding_model']} embeddings "
        f"(fitted on {report['embedding_2d']['fitted_on']} points)."
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Embedding view · {html.escape(title)}</title>
<style>
  body {{ font-family: "DejaVu Sans", Arial, sans-serif; margin: 16px 24px; color: #222; }}
  h1 {{ font-size: 20px; margin: 0 0 6px; }}
  p {{ margin: 0 0 10px; max-width: 70em; }}
</style>
</head>
<body>
<h1>Embedding view · {html.escape(title)}</h1>
<p>{html.escape(summary)}</p>
{plot}
</body>
</html>
"""
