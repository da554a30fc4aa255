"""The fault suite (``make faults``, ``python -m faults``): the pipeline on real processes, under signed
webhook load, with its processes stopped, killed and starved; counted from PostgreSQL, the Graph
API stand-in and the dead-letter topic; written to FAULTS.md.

- :mod:`faults.load`: the customers (signed bodies at a rate, retried as Meta retries).
- :mod:`faults.harness`: the system (PostgreSQL, broker, serve, workers, fake-meta, fake LLM)
  and the faults done to it.
- :mod:`faults.poison`: poison requests as raw HTTP.
- :mod:`faults.scenarios`: each scenario's load, faults and expectation; full and short forms.
- :mod:`faults.count`: pure counting and verdicts; :mod:`faults.report`: FAULTS.md.
"""
