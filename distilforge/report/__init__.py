"""The run report: DIR/report.html (self-contained) and DIR/report.md, with plots as PNG."""

from distilforge.report.build import build_report

__all__ = ["build_report"]
