"""Measurement: energy meters and windows, latency, quality, workload, evaluation text."""

# The measurement protocol's version, part of every store context (search/plan.py `protocol`) and
# of every recipe. Bump it in the same commit as any change to measuring code that changes what a
# stored figure means (windows, warm-up, what counts as goodput, how quality is scored, how a
# sequence starts, an energy source's arithmetic): results stored under another version are then
# measured afresh instead of being mixed with new ones.
#   1: the first protocol.
#   2: serving (request streams; goodput judged per request at its arrival, queueing included).
#   3: a served request with fewer than two tokens (given up on, or asked for one) has no TPOT
#      (it counted as 0 ms, pulling an overloaded run's TPOT percentiles down).
#   4: a stream's window judges its requests by index, from the one whose arrival opened it (left
#      out before, as were requests arriving with it); a TPOT target is broken by unfinished
#      requests at its percentile; RAPL leaves out the `psys` zone (the packages counted twice);
#      llama.cpp's cancel stops its running requests at once (a stream's give-up time, and so its
#      given-up requests' TTFT, waited for them to finish).
PROTOCOL_VERSION = 4
