"""VerifyReport: pass/fail and its rendering (re-measuring is covered end to end in e2e)."""

from __future__ import annotations

from pathlib import Path

from optimizer.verify import Check, VerifyReport


def test_report_passes_only_when_every_check_passes() -> None:
    ok = Check("device", "cpu", "cpu", True)
    bad = Check("goodput tok/J (>= 75% of recorded)", "2.000 (estimate)", "1.000 (estimate, 0.50x)", False)
    assert VerifyReport(Path("r.yaml"), [ok]).passed
    report = VerifyReport(Path("r.yaml"), [ok, bad])
    assert not report.passed
    text = report.render()
    lines = text.splitlines()
    assert lines[0] == "verify r.yaml"
    assert lines[1].strip().startswith("ok")
    assert lines[2].strip().startswith("FAIL")
    assert lines[-1] == "FAILED"
    assert VerifyReport(Path("r.yaml"), [ok]).render().splitlines()[-1] == "PASSED"
