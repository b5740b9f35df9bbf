"""Run reports: report.json (the single source), report.pdf and the interactive embedding view."""

from datapool_pipeline.report.build import build_report, write_report

__all__ = ["build_report", "write_report"]
