"""Search: samplers, the analytic prefilter, candidate evaluation and the loop."""
