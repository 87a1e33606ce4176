"""Measurement flags: what each candidate's energy windows warned about, shown in the report."""

from __future__ import annotations

from dataclasses import replace

from optimizer.measure.workload import WindowResult
from optimizer.report.flags import flags_section, window_flags


def nvml_window(
    joules: float = 100.0, polled: float = 101.0, temp: float = 60.0, clock: float = 1980.0
) -> WindowResult:
    return WindowResult(
        source="nvml",
        joules=joules,
        active_joules=50.0,
        seconds=3.0,
        output_tokens=300,
        goodput_tokens=300,
        polled_joules=polled,
        temperature_c=temp,
        sm_clock_mhz=clock,
    )


def test_quiet_nvml_windows_raise_no_flag(make_performance) -> None:
    perf = replace(make_performance(source="nvml"), windows=[nvml_window(), nvml_window(temp=62)])
    assert window_flags(perf) == []


def test_counter_vs_polled_heat_and_clock_are_flagged(make_performance) -> None:
    windows = [
        nvml_window(polled=80.0, temp=88.0, clock=1500.0),  # counter 25% above the polled integral
        replace(nvml_window(), warnings=["window 1.20 s < 20 NVML counter periods: error may be tens of %"]),
    ]
    flags = window_flags(replace(make_performance(source="nvml"), windows=windows))
    assert flags[0] == "window 1.20 s < 20 NVML counter periods: error may be tens of % (1 of 2 windows)"
    assert "NVML counter and polled power differ by up to 20% (> 10%) (1 of 2 windows)" in flags
    assert any(f.startswith("GPU at 88 °C") for f in flags)
    assert "SM clock varied 1500–1980 MHz between windows" in flags


def test_section_shows_temperature_and_clock_even_without_flags(make_result, make_performance) -> None:
    perf = replace(make_performance(source="nvml"), windows=[nvml_window(temp=55), nvml_window(temp=61)])
    lines = flags_section([make_result(performance=perf)])
    row = next(line for line in lines if line.startswith("| torch"))
    assert "| 2 | 55–61 °C | 1980 MHz | none |" in row


def test_section_says_so_when_nothing_was_flagged(make_result, make_performance) -> None:
    perf = make_performance()
    quiet = replace(perf, windows=[replace(w, warnings=[]) for w in perf.windows])
    assert "No energy window of the 1 measured candidates was flagged." in flags_section(
        [make_result(performance=quiet)]
    )
    assert flags_section([make_result()]) == []


def test_a_warning_with_its_own_figures_counts_every_window_it_came_from(make_performance) -> None:
    """Each window writes its own average into the text: grouped by kind, not by exact text."""
    growing = "requests in flight kept growing ({}), the stream is past this engine's capacity"
    windows = [
        replace(nvml_window(), warnings=[growing.format(14.7)]),
        replace(nvml_window(), warnings=[growing.format(14.8)]),
    ]
    flags = window_flags(replace(make_performance(source="nvml"), windows=windows))
    assert flags == [growing.format(14.7) + ", varying by window (2 of 2 windows)"]


def cpu_window(probe: float | None) -> WindowResult:
    return WindowResult(
        source="estimate",
        joules=100.0,
        active_joules=50.0,
        seconds=5.0,
        output_tokens=500,
        goodput_tokens=500,
        cpu_probe_mibps=probe,
    )


def test_a_window_after_a_slow_cpu_probe_is_flagged_against_the_runs_median(make_performance) -> None:
    perf = replace(make_performance(), windows=[cpu_window(2000.0), cpu_window(1800.0), cpu_window(990.0)])
    flags = window_flags(perf, usual_probe=2200.0)
    assert flags == [
        "the cores ran a fixed CPU probe at 0.45x its median in this run before the window "
        "(< 0.80x per CPU second: a host's clock, a busy sibling thread): these figures are slowed too "
        "(1 of 3 windows)"
    ]
    assert window_flags(perf, usual_probe=None) == []  # nothing to hold the probes to
    unprobed = replace(perf, windows=[cpu_window(None), cpu_window(None)])
    assert window_flags(unprobed, usual_probe=2200.0) == []


def test_finalist_rounds_are_flagged_by_round_against_the_whole_runs_median(
    make_result, make_performance
) -> None:
    """The search ran at full speed and a finalist's second round slowed: the flag names that round."""
    quiet = replace(make_performance(), windows=[cpu_window(2100.0), cpu_window(2100.0)])
    slow = replace(make_performance(), windows=[cpu_window(900.0), cpu_window(950.0)])
    searched = make_result(performance=quiet)
    rounds = [
        replace(searched, role="finalist"),
        replace(searched, role="finalist", performance=slow),
        replace(searched, role="finalist"),
    ]
    lines = flags_section([searched], rounds)
    flagged = [line for line in lines if line.startswith("| torch")]
    assert len(flagged) == 1
    assert "(finalist round 2) | 2 |" in flagged[0] and "0.43x its median" in flagged[0]
    assert "(2 of 2 windows)" in flagged[0]
    assert flags_section([searched], rounds[:1]) == [
        "## Measurement flags",
        "",
        "No energy window of the 1 measured candidates and 1 finalist rounds was flagged.",
        "",
    ]
