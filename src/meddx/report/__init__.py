"""Self-contained HTML evaluation reports and their figures (matplotlib is imported only when drawing)."""

from meddx.report.html import ReportSection, img_tag, render_report, write_report

__all__ = ["ReportSection", "img_tag", "render_report", "write_report"]
