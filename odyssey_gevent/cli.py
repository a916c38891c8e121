"""The `odyssey` command line (mirrors Odyssey sources/main.c + instance.c option parsing).

``odyssey [--console] [--log_to_stdout] [--silent|--verbose] [--test] [-V|--version] [-h] CONFIG``

``--test`` loads and validates CONFIG here (no instance is created): it prints ``config is valid``
and exits 0, or prints every ``file:line:col: message`` error to stderr and exits 1.
"""
from __future__ import annotations

import sys

import click

from odyssey_gevent import ODYSSEY_COMPAT_VERSION, __version__

CONTEXT = dict(help_option_names=["-h", "--help"])

EXIT_OK = 0
EXIT_CONFIG_ERROR = 1


def check_config(path: str, silent: bool = False, out=None, err=None) -> int:
    """The ``--test`` path: load + validate, report, return the exit code."""
    from odyssey_gevent.config.model import ConfigError
    from odyssey_gevent.config.reader import load

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        config = load(path)
    except ConfigError as e:
        if not silent:
            for line in e.warnings:
                print(f"warning: {line}", file=err)
        for line in e.errors:
            print(line, file=err)
        return EXIT_CONFIG_ERROR
    if not silent:
        for line in config.warnings:
            print(f"warning: {line}", file=err)
    print("config is valid", file=out)
    return EXIT_OK


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
    if silent and verbose:
        raise click.UsageError("--silent and --verbose are mutually exclusive")
    if test_only:
        sys.exit(check_config(config, silent=silent))
    from odyssey_gevent.config.model import ConfigError
    from odyssey_gevent import instance
    try:
        rc = instance.main(config, console=console, log_to_stdout=log_to_stdout, silent=silent,
                           verbose=verbose)
    except ConfigError as e:
        # instance normally reports this itself; this is the safety net for startup
        for line in e.errors:
            click.echo(line, err=True)
        rc = EXIT_CONFIG_ERROR
    sys.exit(rc)
