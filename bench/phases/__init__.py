"""The benchmark's phases, each a function of a running :class:`bench.system.Bench` that records what it
measured in ``Bench.results`` (the report's input); :mod:`bench.run` runs them in order.

:mod:`.ceilings` (raw produce, PostgreSQL), :mod:`.webhook` (the webhook and the bare handler, open and
closed loop), :mod:`.e2e` (steps, sustained rate, profile, soak, the customer's view), :mod:`.budget` (CPU
and SQL a message, backlogs), :mod:`.minimal` (the minimal pipeline beside ours), :mod:`.media`,
:mod:`.inbox`.
"""
