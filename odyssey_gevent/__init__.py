"""odyssey-gevent: the Odyssey PostgreSQL connection pooler, in Python on gevent.

One module per C file of Odyssey (sources/*.c); each module's docstring names the file it mirrors.
"""

__version__ = "0.1.0"
# The Odyssey release whose behaviour we mirror; reported by SHOW VERSION and server_version.
ODYSSEY_COMPAT_VERSION = "1.5"
