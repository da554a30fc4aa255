"""The benchmark suite behind ``make bench`` (``python -m bench``): load generator, ceilings, probes, report.

Layout, each module importing only those above it:

- pure: :mod:`bench.stats` (percentiles, lost/duplicate counting, memory growth, the rate search, profile
  summaries), :mod:`bench.targets` (the targets and the verdicts), :mod:`bench.plan` (how long each phase
  runs), :mod:`bench.bodies` (signed webhook bodies), :mod:`bench.fmt` (the report's cells);
- children run as processes of their own: :mod:`bench.loadgen` (the open-loop HTTP load generator),
  :mod:`bench.bare` (the HTTP ceiling), :mod:`bench.ceilings` (produce and PostgreSQL ceilings),
  :mod:`bench.minimal` (the minimal pipeline);
- :mod:`bench.system` (the system under measurement: storage, and processes launched by :mod:`wacrm.system`),
  :mod:`bench.probes` (RSS, CPU, py-spy), :mod:`bench.drive` (load offered and what reached the customer
  counted), :mod:`bench.inbox` and :mod:`bench.inbox_people` (the inbox phase's seed and people), :mod:`bench.media`;
- :mod:`bench.phases` (one module per phase), :mod:`bench.sections` and :mod:`bench.report`
  (``BENCHMARKS.md``), :mod:`bench.plots`; :mod:`bench.run` (the order of the phases, the report written).
"""
