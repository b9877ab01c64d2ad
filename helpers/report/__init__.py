"""Stage 05's answer: summary.json and its schema, tables, figures, report.html, run comparisons."""
