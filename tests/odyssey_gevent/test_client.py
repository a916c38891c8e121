"""Client ids and cancel keys: 14 random bytes per client, drawn for several clients at once
(client._RANDOM), each client's its own."""
from __future__ import annotations

import os

from odyssey_gevent import client as client_mod
from odyssey_gevent.client import Client


def _ident(c):
    return c.id, c.key_pid, c.key_secret


def test_ids_and_keys_are_drawn_in_batches_and_never_shared():
    client_mod._RANDOM.clear()
    first = Client(None)
    left = len(client_mod._RANDOM)
    assert left == client_mod._RANDOM_BATCH - 1           # one draw for the batch
    clients = [first] + [Client(None) for _ in range(3 * client_mod._RANDOM_BATCH)]
    assert len({c.id for c in clients}) == len(clients)
    assert len({(c.key_pid, c.key_secret) for c in clients}) == len(clients)
    assert all(len(c.id) == 13 and c.id[0] == "c" and 0 <= c.key_pid < 2 ** 31 for c in clients)


def test_a_forked_child_does_not_hand_out_its_parents_next_keys():
    client_mod._RANDOM.clear()
    Client(None)                    # the parent has a batch under way
    assert client_mod._RANDOM
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                    # the child: its first client, reported to the parent
        try:
            os.write(w, repr(_ident(Client(None))).encode())
        finally:
            os._exit(0)
    os.close(w)
    child = os.read(r, 200).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert child and child != repr(_ident(Client(None)))


def test_id_and_key_are_the_clients_own_14_bytes(monkeypatch):
    """Each client's id is "c" and its first 6 bytes in hex, its key the next 4 (the pid's top
    bit cleared) and 4 (with processes N the top byte names the process), as one draw per
    client gave them."""
    import struct
    block = (bytes(range(256)) * 8)[:14 * client_mod._RANDOM_BATCH]     # no two 14-byte slices alike
    monkeypatch.setattr(os, "urandom", lambda n: block[:n])
    for tag in (None, 0x05000000):
        monkeypatch.setattr(client_mod, "KEY_TAG", tag)
        client_mod._RANDOM.clear()
        clients = [Client(None) for _ in range(client_mod._RANDOM_BATCH)]
        want = set()
        for i in range(client_mod._RANDOM_BATCH):
            rnd = block[14 * i:14 * i + 14]
            pid, secret = struct.unpack("!II", rnd[6:])
            if tag is not None:
                secret = (secret & 0xFFFFFF) | tag
            want.add(("c" + rnd[:6].hex(), pid & 0x7FFFFFFF, secret))
        assert {_ident(c) for c in clients} == want and len(want) == client_mod._RANDOM_BATCH
