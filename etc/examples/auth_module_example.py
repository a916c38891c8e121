"""An example auth module for odyssey-gevent (see etc/examples/auth-module.conf, docs/config.md).

Declared with `load_module "python:auth_module_example"` (the directory of this file on the
pooler's PYTHONPATH) and used by clear_text rules with `auth_module "auth_module_example"`.

check() runs in a worker thread for each login: it gets the user name, the cleartext password and
a dict about the client (user, database, application_name, host, port, tls, rule), and returns
True to let the client in.  Returning False refuses with 28P01; an exception or a non-bool result
refuses with 28000 and is logged by the pooler.
"""
from __future__ import annotations

import hashlib
import hmac
import os

# user -> sha256 hex of the password; a real module would ask a service or read a file
USERS = {
    "app": hashlib.sha256(b"app-secret").hexdigest(),
}
# only these databases, and (optionally) only TLS clients
DATABASES = {"app"}
REQUIRE_TLS = os.environ.get("AUTH_EXAMPLE_REQUIRE_TLS") == "1"


def check(user: str, password: str, client_info: dict) -> bool:
    expected = USERS.get(user)
    if expected is None or client_info["database"] not in DATABASES:
        return False
    if REQUIRE_TLS and not client_info["tls"]:
        return False
    given = hashlib.sha256(password.encode()).hexdigest()
    return hmac.compare_digest(given, expected)
