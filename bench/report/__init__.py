"""Tables -> the report: the verdict's sentences, charts, report.md and report.html."""
