"""auth_cert: the Common Name extraction and machinarium's name comparison rules."""
from __future__ import annotations

import pytest

from odyssey_gevent.auth_cert import common_name, name_matches


def test_common_name_from_getpeercert():
    cert = {"subject": ((("countryName", "NL"),), (("commonName", "tls_client"),),
                        (("commonName", "second"),))}
    assert common_name(cert) == "tls_client"      # the first CN, as X509_NAME_get_text_by_NID
    assert common_name({"subject": ((("organizationName", "x"),),)}) is None
    assert common_name({}) is None                 # CERT_NONE: nothing verified
    assert common_name(None) is None               # no certificate


@pytest.mark.parametrize("cert_name,name,ok", [
    ("tls_client", "tls_client", True),
    ("TLS_Client", "tls_client", True),            # strcasecmp
    ("tls_client", "tls_client2", False),
    ("tls_client2", "tls_client", False),          # no prefix matches
    ("*.example.com", "app.example.com", True),
    ("*.example.com", "a.b.example.com", False),   # one label only
    ("*.example.com", "example.com", False),
    ("*.com", "app.com", False),                   # "*.tld" is refused
    ("*", "anything", False),
    ("*foo.com", "xfoo.com", False),
    ("*..com", "a..com", False),
    ("*.bar..", "a.bar..", False),
    ("*.example.com", ".example.com", False),
    ("*.example.com", "default_user", False),
])
def test_name_matches(cert_name, name, ok):
    assert name_matches(cert_name, name) is ok
