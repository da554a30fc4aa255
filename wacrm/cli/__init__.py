"""The ``wacrm`` command: one module per command group, each adding its subcommands to the parser
(``add(sub)``) and running them (``cmd_*``); :mod:`wacrm.cli.main` holds the parser and the entry point.

Each subcommand loads the settings once (:mod:`wacrm.cli.shared`) and reports problems plainly: a
message on stderr and an exit code (:mod:`wacrm.core.exits`), never a traceback for a configuration
or input error. A command imports what it runs when it runs, so that ``wacrm --help`` and the small
commands start without loading the server, the agents or the drivers.
"""
