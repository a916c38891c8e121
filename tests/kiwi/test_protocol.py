"""kiwi.protocol.Conversation walked with tables: message sequences in, what the server still
owes out (PostgreSQL's rules: skip to Sync after an extended-protocol error, Sync ignored in
COPY-in, ReadyForQuery ends everything), plus the Request instructions the prepared-statement
layer relies on (hide, replace an error or an EmptyQueryResponse, LOCAL answers in order)."""
from __future__ import annotations

import pytest

from kiwi import be_write
from kiwi.protocol import (DROP, FORWARD, LOCAL, REPLACE, TRANSITIONS, Conversation, Phase,
                           Request)


def run(events, exact=False):
    """events: 'P' etc. for a frontend message sent; '>Z:T' for a server ReadyForQuery with status
    T; '>1' etc. for another server message. Returns the Conversation and the receive actions."""
    c = Conversation(exact=exact)
    actions = []
    for ev in events:
        if ev.startswith(">"):
            t, _, status = ev[1:].partition(":")
            actions.append(c.receive(ord(t), status.encode() or None))
        else:
            c.send(ord(ev))
    return c, actions


# (name, events, syncs owed, unsynced, phase, tx status, broken?)
CASES = [
    ("simple query", ["Q", ">T", ">D", ">C", ">Z:I"], 0, False, Phase.READY, b"I", False),
    ("query in flight", ["Q", ">T"], 1, False, Phase.BUSY, b"I", False),
    ("two queries, one answered", ["Q", "Q", ">C", ">Z:T"], 1, False, Phase.BUSY, b"T", False),
    ("extended batch", ["P", "B", "D", "E", "S", ">1", ">2", ">T", ">D", ">C", ">Z:I"],
     0, False, Phase.READY, b"I", False),
    ("batch without Sync", ["P", "B", "E"], 0, True, Phase.BUSY, b"I", False),
    ("batch answered, second open", ["P", "B", "E", "S", "P", ">1", ">2", ">C", ">Z:I"],
     0, True, Phase.BUSY, b"I", False),
    ("error skips to Sync", ["P", "B", "E", "S", ">E", ">Z:I"], 0, False, Phase.READY, b"I", False),
    ("error with no Sync yet", ["P", "B", "E", ">E"], 0, True, Phase.SKIP, b"I", False),
    ("skip ignores Query", ["P", "B", ">E", "Q"], 0, True, Phase.SKIP, b"I", False),
    ("Sync ends the skip", ["P", "B", ">E", "Q", "S", ">Z:I"], 0, False, Phase.READY, b"I", False),
    ("error in a simple query", ["Q", ">E", ">Z:E"], 0, False, Phase.READY, b"E", False),
    ("Query after an errored batch is dropped",
     ["P", "B", "E", "Q", "S", ">1", ">E", ">Z:I"], 0, False, Phase.READY, b"I", False),
    ("COPY-in: Sync after Execute ignored", ["P", "B", "E", "S", ">1", ">2", ">G", "d", "c", "S",
                                             ">C", ">Z:I"], 0, False, Phase.READY, b"I", False),
    ("COPY-in: data before the response", ["P", "B", "E", "S", "d", "c", "S", ">1", ">2", ">G",
                                           ">C", ">Z:I"], 0, False, Phase.READY, b"I", False),
    ("COPY-in in progress", ["Q", ">G", "d"], 1, False, Phase.COPY_IN, b"I", False),
    ("COPY-in Sync ignored while copying", ["Q", ">G", "S", "d"], 1, False, Phase.COPY_IN, b"I", False),
    ("COPY-out", ["Q", ">H", ">d"], 1, False, Phase.COPY_OUT, b"I", False),
    ("COPY-out done", ["Q", ">H", ">d", ">c", ">C", ">Z:I"], 0, False, Phase.READY, b"I", False),
    ("function call", ["F", ">V", ">Z:I"], 0, False, Phase.READY, b"I", False),
    ("ReadyForQuery nobody asked for", [">Z:I"], 0, False, Phase.READY, b"I", True),
    ("ParseComplete with no Parse", ["Q", ">1"], 1, False, Phase.BUSY, b"I", True),
    ("ReadyForQuery before the ParseComplete", ["P", "S", ">Z:I"], 1, False, Phase.BUSY, b"I", True),
]


@pytest.mark.parametrize("name,events,syncs,unsynced,phase,status,broken", CASES, ids=[c[0] for c in CASES])
def test_sequences(name, events, syncs, unsynced, phase, status, broken):
    for exact in (False, True):
        c, _ = run(events, exact)
        assert (c.syncs, c.unsynced, c.phase, c.tx_status, c.broken is not None) == \
            (syncs, unsynced, phase, status, broken), f"exact={exact}"
        assert c.synchronized == (syncs == 0)
        assert c.idle == (syncs == 0 and not unsynced and not c.queue)


def test_replies_counted():
    c, _ = run(["Q", "S", ">Z:I", ">Z:T"])
    assert c.replies == 2 and c.tx_status == b"T" and c.idle


def test_exact_mode_queues_describe_and_execute_until_their_replies():
    c, _ = run(["P", "B", "D", "E"], exact=True)
    assert [chr(t) for t in c.queue] == ["P", "B", "D", "E"]
    c, _ = run(["P", "B", "D", "E", ">1", ">2", ">T"], exact=True)
    assert [chr(t) for t in c.queue] == ["E"]
    c, _ = run(["P", "B", "D", "E", ">1", ">2", ">T", ">D", ">C"], exact=True)
    assert not c.queue and c.unsynced
    c, _ = run(["Q", ">T", ">C"], exact=True)          # a simple query's T and C pop nothing
    assert [chr(t) for t in c.queue] == ["Q"]


def test_transitions_table_names_only_known_phases():
    phases = {v for k, v in vars(Phase).items() if not k.startswith("_")}
    for (src, _event), dst in TRANSITIONS.items():
        assert src in phases and dst in phases


# -- requests with instructions ---------------------------------------------------------------------
def test_hidden_parse_reply_is_dropped_and_on_done_called():
    c = Conversation()
    done = []
    c.send_request(Request(ord("P"), hide=True, on_done=lambda: done.append(1)))
    c.send(ord("B"))
    c.send(ord("S"))
    assert c.receive(ord("1")) == DROP and done == [1]
    assert c.receive(ord("2")) == FORWARD
    assert c.receive(ord("Z"), b"I") == FORWARD and c.idle


def test_error_of_a_hidden_parse_reaches_the_client_and_undoes_it():
    c = Conversation()
    failed = []
    c.send_request(Request(ord("P"), hide=True, on_fail=lambda: failed.append("p")))
    c.send(ord("B"))
    c.send(ord("S"))
    assert c.receive(ord("E")) == FORWARD
    assert failed == ["p"] and [chr(t) if isinstance(t, int) else t for t in c.queue] == ["S"]


def test_replaced_error():
    c = Conversation()
    ours = be_write.error_response("ERROR", "42P05", 'prepared statement "x" already exists')
    c.send_request(Request(ord("D"), error=ours))
    c.send(ord("S"))
    assert c.receive(ord("E")) == REPLACE and c.replacement == ours
    assert c.receive(ord("Z"), b"I") == FORWARD and c.idle


def test_hidden_query_drops_everything_up_to_its_ready():
    c = Conversation()
    c.send_request(Request(ord("Q"), hide=True))
    c.send(ord("Q"))
    assert [c.receive(ord(t)) for t in "CN"] == [DROP, DROP]
    assert c.receive(ord("Z"), b"I") == DROP
    assert c.receive(ord("C")) == FORWARD and c.receive(ord("Z"), b"I") == FORWARD and c.idle


def test_empty_query_replaced_by_a_command_tag():
    c = Conversation()
    tag = be_write.command_complete("DEALLOCATE")
    c.send_request(Request(ord("Q"), empty=tag))
    assert c.receive(ord("I")) == REPLACE and c.replacement == tag
    assert c.receive(ord("Z"), b"I") == FORWARD


def test_failed_query_request_calls_on_fail_at_its_ready():
    c = Conversation()
    seen = []
    c.send_request(Request(ord("Q"), on_done=lambda: seen.append("done"), on_fail=lambda: seen.append("fail")))
    c.receive(ord("E"))
    assert seen == []
    c.receive(ord("Z"), b"I")
    assert seen == ["fail"]


def test_local_answer_waits_for_the_replies_before_it():
    c = Conversation(exact=True)
    c.send(ord("P"))
    c.send(ord("B"))
    c.send(ord("E"))
    c.send_request(Request(LOCAL, local=b"<pc>"))
    c.send(ord("S"))
    assert c.output is None
    c.receive(ord("1"))
    c.receive(ord("2"))
    c.receive(ord("D"))
    assert c.output is None            # the Execute's rows are still coming
    c.receive(ord("C"))
    assert c.take_output() == b"<pc>"
    c.receive(ord("Z"), b"I")
    assert c.idle


def test_local_answer_with_nothing_outstanding_is_due_at_once():
    c = Conversation()
    c.send_request(Request(LOCAL, local=b"<cc>"))
    assert c.take_output() == b"<cc>" and c.idle


def test_output_is_none_while_no_answer_is_due():
    """`output` is None while nothing is due (the relay tests it with `is`), a list of the due
    answers in order otherwise; take_output empties it to None again (b"" when nothing is due)."""
    c = Conversation()
    assert c.output is None and c.take_output() == b""
    c.send(ord("Q"))
    c.send_request(Request(LOCAL, local=b"<a>"))
    c.send_request(Request(LOCAL, local=b"<b>"))
    assert c.output is None                 # after the Query's reply
    c.receive(ord("Z"), b"I")
    assert c.output == [b"<a>", b"<b>"]
    assert c.take_output() == b"<a><b>" and c.output is None and c.idle


def test_an_error_skips_local_answers_queued_after_it_and_undoes_them():
    c = Conversation(exact=True)
    undone = []
    c.send(ord("P"))
    c.send_request(Request(LOCAL, local=b"<pc>", on_fail=lambda: undone.append(1)))
    c.send(ord("S"))
    c.receive(ord("E"))
    assert undone == [1] and c.output is None
    c.receive(ord("Z"), b"I")
    assert c.idle


def test_requests_sent_while_skipping_are_dropped_and_undone():
    c = Conversation()
    c.send(ord("P"))
    c.receive(ord("E"))
    undone = []
    c.send_request(Request(LOCAL, local=b"<pc>", on_fail=lambda: undone.append(1)))
    assert undone == [1] and c.output is None and c.skipping


@pytest.mark.parametrize("events", [
    # a COPY whose data, CopyDone and Sync were sent with a second batch behind it
    ["B", "E", "d", "c", "S", "B", "E", "S", ">2", ">G", ">C", ">Z:I", ">2", ">C", ">Z:I"],
    # libpq's order (a Sync right after the Execute, ignored in COPY-in), then another batch
    ["B", "E", "S", "d", "c", "S", "B", "E", "S", ">2", ">G", ">C", ">Z:I", ">2", ">C", ">Z:I"],
    # a COPY behind a normal batch, the server answering the first batch late
    ["B", "E", "S", "B", "E", "d", "c", "S", ">2", ">C", ">Z:I", ">2", ">G", ">C", ">Z:I"],
])
def test_exact_mode_counts_pipelined_copy_in_by_its_own_execute(events):
    c, _ = run(events, exact=True)
    assert c.broken is None and c.idle and c.replies == 2


def test_exact_mode_copy_in_waits_for_the_data_when_none_was_sent():
    c, _ = run(["B", "E", "S", ">2", ">G"], exact=True)
    assert c.phase == Phase.COPY_IN and c.syncs == 0        # the Sync is ignored while copying
    c.send(ord("d"))
    c.send(ord("c"))
    c.send(ord("S"))
    c.receive(ord("C"))
    c.receive(ord("Z"), b"I")
    assert c.idle and c.broken is None


def test_flushed_follows_the_last_extended_message():
    """`flushed`: the client sent a Flush after its last extended-protocol message (the relay's
    pool_idle_in_request_timeout_ms check tells a client waiting for PostgreSQL from a silent one)."""
    c = Conversation()
    assert not c.flushed
    c.send(ord('P'))
    assert not c.flushed
    c.send(ord('H'))
    assert c.flushed
    c.send(ord('B'))
    assert not c.flushed
    c.send(ord('E'))
    c.send(ord('H'))
    assert c.flushed and c.unsynced
    c.send(ord('D'))
    assert not c.flushed


def test_inline_extended_batch_leaves_the_state_of_the_general_branches():
    """Describe, Execute and Sync of a batch without exact counting take send()'s inline case
    (phase BUSY after Parse): the state must be what the general branches leave, with and
    without a CopyDone sent before the server asked for COPY data."""
    c, _ = run(["P", "B", "D", "E"])
    assert (c.unsynced, c.flushed, c._exec_syncs, c._copy_ended) == (True, False, 0, False)
    c.send(ord("S"))
    assert (c.unsynced, c._exec_syncs, c.syncs, list(c.queue)) == (False, 1, 1, [ord("P"), ord("B"), ord("S")])
    c.send(ord("S"))               # a second Sync with no Execute between counts as one more
    assert (c._exec_syncs, c.syncs) == (2, 2)
    c, _ = run(["P", "B", "E", "c", "S"])
    assert c._copy_ended and c._exec_syncs == 0 and c.syncs == 1   # not after an Execute's COPY
    c, _ = run(["E", "S"])         # Execute first, phase READY: the general branches
    assert (c.unsynced, c._exec_syncs, c.syncs, c.phase) == (False, 1, 1, Phase.BUSY)


def _state(c):
    # (not `batch`: send_many's mark of the queue it filled, which one send() per message never
    # sets; test_the_batch_mark_is_a_tail_of_the_queue_it_marks keeps what it says)
    return {name: list(v) if name == "queue" else v for name in Conversation.__slots__
            if name != "batch" for v in (getattr(c, name),)}


def test_the_batch_mark_is_a_tail_of_the_queue_it_marks():
    """Conversation.batch (the queued entries of the remembered batch send_many added last) is
    None or a tuple the queue ends with, or whose tail the queue is, after every send, send_many,
    send_request and receive, from every phase, with and without exact counting: the relay's
    reply walk takes the queue for the batch where the two lengths are equal (random
    conversations, the same seed every run; a change of the queue that kept a stale mark
    fails it). And it is set at all: the marked batches are counted."""
    import random
    from kiwi.protocol import Request
    rnd = random.Random(11)
    client = "PBDESQFHCcfdX"
    server = "123TnDCIsEGHWcZ"
    batches = [b"PBDES", b"PBES", b"BES", b"ES", b"PBE", b"DEH", b"PBDESPBDES", b"QPBES"]
    marked = 0
    for _ in range(1500):
        c = Conversation(exact=rnd.random() < 0.3)
        for _ in range(rnd.randrange(1, 30)):
            r = rnd.random()
            if r < 0.3:
                c.send_many(rnd.choice(batches))
                marked += c.batch is not None and len(c.batch) > 0
            elif r < 0.5:
                c.send(ord(rnd.choice(client)))
            elif r < 0.55:
                c.send_request(Request(ord(rnd.choice("QS")), hide=rnd.random() < 0.5))
            else:
                c.receive(ord(rnd.choice(server)), rnd.choice([b"I", b"T", None]))
            batch = c.batch
            if batch is not None:
                queue = list(c.queue)
                n = min(len(queue), len(batch))
                assert queue[len(queue) - n:] == list(batch[len(batch) - n:]), (batch, queue)
    assert marked > 300


def test_send_many_leaves_the_state_of_one_send_per_message():
    """send_many (the relay's one call per read) must leave exactly what a send() per message
    leaves, from every phase (its inline path covers READY and BUSY without exact counting;
    COPY, SKIP and exact mode go through send()): random client batches after random
    conversations, the same seed every run."""
    import random
    rnd = random.Random(10)
    client = "PBDESQFHCcfdX"
    server = [">1", ">2", ">3", ">T", ">n", ">D", ">C", ">I", ">s", ">E", ">G", ">H", ">W", ">c", ">Z:I", ">Z:T"]
    phases = set()
    for _ in range(3000):
        prefix = [rnd.choice(client) if rnd.random() < 0.5 else rnd.choice(server)
                  for _ in range(rnd.randrange(12))]
        batch = [ord(rnd.choice(client)) for _ in range(rnd.randrange(1, 8))]
        exact = rnd.random() < 0.3
        one, _ = run(prefix, exact)
        many, _ = run(prefix, exact)
        as_bytes, _ = run(prefix, exact)    # the relay's remembered read layouts tell bytes
        phases.add(one.phase)
        for t in batch:
            one.send(t)
        many.send_many(batch)
        as_bytes.send_many(bytes(batch))
        assert _state(many) == _state(one), (prefix, [chr(t) for t in batch], exact)
        assert _state(as_bytes) == _state(one), (prefix, [chr(t) for t in batch], exact)
    assert phases == {v for k, v in vars(Phase).items() if not k.startswith("_")}


def test_send_many_remembers_a_batch_with_an_execute_whatever_the_state_before():
    """A batch with an Execute is remembered by its types (kiwi.protocol._BATCHES) the first
    time and applied from the memory afterwards: from every state before it (Syncs counted
    since an Execute, a CopyDone sent early, a Flush, an open batch) it must leave what a
    send() per message leaves."""
    from kiwi import protocol
    protocol._BATCHES.clear()
    batch = [ord(c) for c in "PBDES"]
    befores = [[], ["E", "S", "S"], ["P", "B", "E", "c"], ["P", "H"], ["Q"], ["P", "B", "E", "S", ">1", ">2"],
               ["Q", ">C", ">Z:T"]]
    for before in befores:
        one, _ = run(before)
        many, _ = run(before)
        for t in batch:
            one.send(t)
        many.send_many(batch)
        assert _state(many) == _state(one), before
        assert bytes(batch) in protocol._BATCHES
    without = [ord(c) for c in "PBS"]           # no Execute: never remembered
    run([])[0].send_many(without)
    assert bytes(without) not in protocol._BATCHES


def test_exact_mode_inline_describe_execute_sync_leave_the_state_of_the_general_branches():
    """With exact counting (the prepared-statement layer), Describe, Execute and Sync in phase
    BUSY take send()'s inline case, and RowDescription/CommandComplete at the head take
    receive()'s: the queue, flags and counts must be what the general branches leave (a Sync
    after an Execute flagged, a CopyDone sent early marks the Execute and unflags the Sync)."""
    from kiwi.protocol import _AFTER_EXECUTE, _COPY_SENT
    P, B, D, E, S = (ord(c) for c in "PBDES")
    c, _ = run(["P", "D", "E", "S"], exact=True)
    assert (list(c.queue), c.syncs, c.unsynced, c.flushed, c._exec_syncs, c._copy_ended) == \
        ([P, D, E, S | _AFTER_EXECUTE], 1, False, False, 1, False)
    c.send(S)
    assert (list(c.queue)[-1], c.syncs, c._exec_syncs) == (S | _AFTER_EXECUTE, 2, 2)
    for reply in ("1", "T", "C"):
        assert c.receive(ord(reply)) == FORWARD
    assert list(c.queue) == [S | _AFTER_EXECUTE, S | _AFTER_EXECUTE] and c.broken is None
    c, _ = run(["P", "B", "E", "c", "S"], exact=True)
    assert (list(c.queue), c._copy_ended, c.syncs) == ([P, B, E | _COPY_SENT, S], True, 1)
    c, _ = run(["P", "B", "E", "c", "S", ">1", ">2", ">C", ">Z:I"], exact=True)
    assert c.idle and c.broken is None
    c, _ = run(["Q", ">T", ">C"], exact=True)          # a query's RowDescription pops no Describe
    assert list(c.queue) == [ord("Q")]


def test_send_many_remembers_exact_batches_only_when_their_types_decide_the_state():
    """With exact counting a Sync is flagged by the Execute before it and a CopyDone flags an
    Execute already queued: a batch is remembered only with an Execute, no Sync before its first
    Execute or Query and no CopyDone/CopyFail, and a remembered batch leaves from every state
    what a send() per message leaves."""
    from kiwi import protocol
    protocol._BATCHES_EXACT.clear()
    befores = [[], ["E", "S", "S"], ["P", "B", "E", "c"], ["P", "H"], ["Q"], ["B", "E", "S", ">2", ">C", ">Z:I"],
               ["Q", ">C", ">Z:T"], ["B", "E"]]
    for batch, remembered in (("BDES", True), ("DES", True), ("QES", True), ("SBES", False), ("BEcS", False),
                              ("BDS", False)):
        types = [ord(c) for c in batch]
        for before in befores:
            one, _ = run(before, exact=True)
            many, _ = run(before, exact=True)
            for t in types:
                one.send(t)
            many.send_many(types)
            assert _state(many) == _state(one), (batch, before)
        assert (bytes(types) in protocol._BATCHES_EXACT) is remembered, batch


def _requests_apart(state):
    """_state with each queued Request as what it says (two conversations have their own)."""
    state["queue"] = [e if e.__class__ is int else (repr(e), e.failed) for e in state["queue"]]
    return state


def test_receive_completions_takes_only_what_receive_would_forward_with_nothing_due():
    """receive_completions (the relay's one call for a remembered reply's ParseComplete and
    BindComplete) must take a prefix of the types for which receive() would pop a plain head,
    forward and make nothing due, and leave exactly the state receive() per message leaves once
    the caller has told the rest: random replies after random conversations with the pooler's
    own requests (LOCAL answers, hidden requests) among the client's, the same seed every run."""
    import random
    from kiwi.protocol import LOCAL, Request
    rnd = random.Random(11)
    client = "PBDESQFHC"
    server = [">1", ">2", ">3", ">T", ">n", ">D", ">C", ">I", ">E", ">Z:I"]
    own = ["R:L", "R:P", "R:S"]
    replies = [ord(c) for c in "123ZEIc"]

    def conversation(prefix, exact):
        c = Conversation(exact=exact)
        for ev in prefix:
            if ev == "R:L":
                c.send_request(Request(LOCAL, local=b"local"))
            elif ev.startswith("R:"):
                c.send_request(Request(ord(ev[2]), hide=True))
            elif ev.startswith(">"):
                t, _, status = ev[1:].partition(":")
                c.receive(ord(t), status.encode() or None)
            else:
                c.send(ord(ev))
        c.take_output()
        return c

    taken = stopped = 0
    for _ in range(3000):
        prefix = [rnd.choice(client) if rnd.random() < 0.6 else rnd.choice(own if rnd.random() < 0.3 else server)
                  for _ in range(rnd.randrange(14))]
        types = [rnd.choice(replies[:3]) if rnd.random() < 0.8 else rnd.choice(replies) for _ in range(rnd.randrange(1, 5))]
        exact = rnd.random() < 0.3
        one, many = conversation(prefix, exact), conversation(prefix, exact)
        before = one.broken             # (a prefix may have broken it already)

        def told(c, t):
            """receive()'s action, what became due, whether it broke the count"""
            return c.receive(t, b"I" if t == ord("Z") else None), c.take_output(), c.broken != before

        each = [told(one, t) for t in types]
        k = many.receive_completions(bytes(types))
        assert all(e == (FORWARD, b"", False) for e in each[:k]), (prefix, types, k)
        assert many.output is None and many.broken == before
        rest = [told(many, t) for t in types[k:]]
        assert rest == each[k:], (prefix, types, k)
        assert _requests_apart(_state(many)) == _requests_apart(_state(one)), (prefix, types, k)
        taken += k
        stopped += k < len(types) and each[k] == (FORWARD, b"", False) and types[k] in (ord("1"), ord("2"))
    # both cases met: completions taken, and left to receive() where the entry after the head
    # is the pooler's own request (receive would forward it, but may have made answers due)
    assert taken > 200 and stopped > 100
