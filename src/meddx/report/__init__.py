"""Self-contained HTML evaluation reports and their figures (matplotlib is imported only when drawing)."""

from meddx.report.classification import render_report, write_report
from meddx.report.page import ReportSection, img_tag

__all__ = ["ReportSection", "img_tag", "render_report", "write_report"]
