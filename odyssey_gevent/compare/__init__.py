"""odyssey-compare: the scenario runner that compares odyssey-gevent with C Odyssey.

``runner`` (the command and the Runner), ``scenario`` (YAML suites and expectations),
``steps`` (what a step does and records), ``wire`` (a blocking kiwi client for raw steps),
``diff`` (normalization, differences, the table and JSON).
"""
from odyssey_gevent.compare.runner import Runner, main

__all__ = ["Runner", "main"]
