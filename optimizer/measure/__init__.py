"""Measurement: energy meters and windows, latency, quality, workload, evaluation text."""
