"""Run reports: report.json (the single source), report.pdf and the interactive embedding view."""

from datapool_pipeline.report.build import Report, build_report, write_report
from datapool_pipeline.report.summary import headline_markdown

__all__ = ["Report", "build_report", "headline_markdown", "write_report"]
