"""The benchmark suite behind ``make bench`` (``python -m bench``): load generator, ceilings, probes, report.

Layout: :mod:`bench.stats` (pure arithmetic: percentiles, lost/duplicate counting, memory
growth, the rate search, profile summaries), :mod:`bench.bodies` (realistic signed webhook
bodies), :mod:`bench.loadgen` (the open-loop HTTP load generator, run as its own process),
:mod:`bench.bare` (the bare aiohttp handler: the HTTP ceiling), :mod:`bench.ceilings`
(raw produce and PostgreSQL ceilings, each its own process), :mod:`bench.probes` (RSS,
consumer lag, py-spy), :mod:`bench.report` (machine description and ``BENCHMARKS.md``) and
:mod:`bench.run` (the orchestration: start everything, measure, stop everything).
"""
