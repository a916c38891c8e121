"""Socket options on accepted clients: a value the kernel refuses costs only that option (issue
15, item 4), and a negative keepalive_usr_timeout is computed as C Odyssey does."""
from __future__ import annotations

import pytest

from tests.integration.conftest import rule, scalar


@pytest.mark.timeout(30)
@pytest.mark.parametrize("options", [
    {"keepalive_usr_timeout": -1},                            # computed from the other three
    {"keepalive": 15, "keepalive_keep_interval": 0},          # TCP_KEEPINTVL 0: EINVAL from Linux
], ids=["usr_timeout_-1", "refused_option"])
def test_clients_are_served_whatever_the_socket_options(odyssey, options):
    p = odyssey(rule("tx_user"), **options)
    for _ in range(3):
        assert scalar(p.dsn("tx_user", "db1")) == 1
    if options.get("keepalive_keep_interval") == 0:
        log = p.log()
        assert log.count("cannot set keepalive on client sockets") == 1    # once, not per client
