"""A pytest plugin for the GPU call (`-p evals.instant_failures`, the repository on PYTHONPATH): each failure's
traceback is printed when it happens. pytest prints them in its closing summary, which a run cut
short by its time limit never reaches (a slot engine's close() waits for a compile in flight)."""

from __future__ import annotations

from typing import Any


def pytest_runtest_logreport(report: Any) -> None:
    if report.failed:
        print(f"\n--- FAILED {report.nodeid} ({report.when})\n{report.longreprtext}", flush=True)
