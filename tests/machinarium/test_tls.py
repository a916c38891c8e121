"""TLS upgrade on both sides with certificates generated for the test (openssl CLI)."""
from __future__ import annotations

import shutil
import ssl
import subprocess

import pytest

import machinarium as mm

from .conftest import run_in_machine

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=20)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server cert for localhost/127.0.0.1 and a client cert, all EC P-256 (fast)."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=test-ca", cwd=d)
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        _openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", *ext, cwd=d)
    return {k: str(d / k) for k in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


def _tls_pair(server_ctx, client_ctx, hostname="localhost", kept_file=None):
    (lst,) = mm.listen("127.0.0.1", 0)
    client = mm.connect("127.0.0.1", lst.local[1], 1000)
    server = lst.accept(1000)
    lst.close()
    errors = {}
    if kept_file is not None:       # the client's FileIO (Io.use_file) made before the upgrade
        client.use_file()
        kept_file.append(client._fread.__self__)

    def server_side():
        try:
            server.tls_server(server_ctx, 2000)
        except OSError as e:
            errors["server"] = e

    c = mm.Coroutine(server_side, name="tls-server")
    try:
        client.tls_client(client_ctx, hostname, 2000)
    except OSError as e:
        errors["client"] = e
    c.join(3000)
    return server, client, errors


def test_handshake_both_sides_verify_full_and_client_cert(pki):
    def body():
        sctx = mm.server_context(pki["server.crt"], pki["server.key"], ca_file=pki["ca.crt"],
                                 client_cert="required")
        cctx = mm.client_context("verify-full", ca_file=pki["ca.crt"],
                                 cert_file=pki["client.crt"], key_file=pki["client.key"])
        server, client, errors = _tls_pair(sctx, cctx)
        assert not errors
        client.write(b"secret")
        got = server.read(6, 1000)
        server.write(b"ok", 1000)
        back = client.read(2, 1000)
        subject = dict(x[0] for x in server.tls_peer_certificate()["subject"])
        with pytest.raises(mm.MachineError):
            server.detach()  # TLS connections cannot move between machines
        server.close(), client.close()
        return got, back, subject["commonName"], server.is_tls

    assert run_in_machine(body) == (b"secret", b"ok", "client", True)


def test_a_tls_upgrade_drops_the_kept_file(pki):
    """Io.use_file's FileIO reads the plain socket: the TLS upgrade closes and drops it (the
    relay then reads through TLS, not around it), and a TLS Io keeps none."""
    def body():
        sctx = mm.server_context(pki["server.crt"], pki["server.key"])
        cctx = mm.client_context("require")
        kept = []
        server, client, errors = _tls_pair(sctx, cctx, kept_file=kept)
        assert not errors
        assert kept[0].closed and client._fread is None and client._fwrite is None
        client.use_file()
        assert client._fread is None
        client.write(b"secret")
        got = server.read(6, 1000)
        server.close(), client.close()
        return got

    assert run_in_machine(body) == b"secret"


def test_required_client_cert_missing_fails_handshake(pki):
    def body():
        sctx = mm.server_context(pki["server.crt"], pki["server.key"], ca_file=pki["ca.crt"],
                                 client_cert="required")
        cctx = mm.client_context("require")  # no client certificate
        server, client, errors = _tls_pair(sctx, cctx)
        if "client" not in errors:  # TLS 1.3: the client learns on its first read
            with pytest.raises(OSError):
                client.read(1, 1000)
        server.close(), client.close()
        return type(errors.get("server"))

    assert issubclass(run_in_machine(body), ssl.SSLError)


def test_verify_full_rejects_wrong_hostname(pki):
    def body():
        sctx = mm.server_context(pki["server.crt"], pki["server.key"])
        cctx = mm.client_context("verify-full", ca_file=pki["ca.crt"])
        server, client, errors = _tls_pair(sctx, cctx, hostname="db.example.com")
        server.close(), client.close()
        return type(errors.get("client"))

    assert issubclass(run_in_machine(body), ssl.SSLCertVerificationError)


def test_handshake_times_out_on_silent_peer(pki):
    def body():
        (lst,) = mm.listen("127.0.0.1", 0)
        client = mm.connect("127.0.0.1", lst.local[1], 1000)
        server = lst.accept(1000)  # never answers the ClientHello
        with pytest.raises(mm.TimedOut):
            client.tls_client(mm.client_context("require"), None, 50)
        for io in (server, lst):
            io.close()
        return client.closed

    assert run_in_machine(body)


def test_client_context_modes():
    assert mm.client_context("disable") is None
    assert mm.client_context("prefer").verify_mode == ssl.CERT_NONE
    assert mm.client_context("verify_ca").verify_mode == ssl.CERT_REQUIRED  # Odyssey spelling
    assert mm.client_context("verify-ca").check_hostname is False
    assert mm.client_context("verify-full").check_hostname is True
    assert mm.sslmode_requires_tls("require") and not mm.sslmode_requires_tls("prefer")
    assert mm.sslmode_tries_tls_first("prefer") and not mm.sslmode_tries_tls_first("allow")
    with pytest.raises(ValueError):
        mm.client_context("sometimes")
