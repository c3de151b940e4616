from editguard.report.json_report import RunInfo, load_report, write_report
from editguard.report.terminal import render_report

__all__ = ["RunInfo", "load_report", "render_report", "write_report"]
