"""Reports: report.md and the Pareto plot."""
