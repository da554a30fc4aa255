"""Tools shared by the checkout's tool packages (``bench``, ``faults``) and the tests; not installed.

:mod:`harness.machine` describes the machine a run happened on; :mod:`harness.databases` makes a database
of its own on a PostgreSQL server.
"""
