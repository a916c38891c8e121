"""The `odyssey` command line (mirrors Odyssey sources/main.c + instance.c option parsing)."""
from __future__ import annotations

import sys

import click

from odyssey_gevent import ODYSSEY_COMPAT_VERSION, __version__

CONTEXT = dict(help_option_names=["-h", "--help"])


@click.command(context_settings=CONTEXT)
@click.argument("config", type=click.Path(dir_okay=False), required=False)
@click.option("--console", is_flag=True, help="Stay in the foreground (overrides daemonize).")
@click.option("--log_to_stdout", is_flag=True, help="Log to stdout as well.")
@click.option("--silent", is_flag=True, help="Log only errors.")
@click.option("--verbose", is_flag=True, help="Log debug messages.")
@click.option("--test", "test_only", is_flag=True, help="Validate the config, print 'config is valid' and exit.")
@click.version_option(__version__, "-V", "--version",
                      message=f"odyssey-gevent %(version)s (odyssey {ODYSSEY_COMPAT_VERSION} compatible)")
def main(config, console, log_to_stdout, silent, verbose, test_only):
    """Run the odyssey-gevent PostgreSQL connection pooler on CONFIG (an Odyssey config file)."""
    if config is None:
        raise click.UsageError("a config file is required: odyssey [OPTIONS] CONFIG")
    from odyssey_gevent import instance
    sys.exit(instance.main(config, console=console, log_to_stdout=log_to_stdout, silent=silent,
                           verbose=verbose, test_only=test_only))
