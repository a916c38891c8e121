"""Channels and messages."""
from __future__ import annotations

import threading
import time

import pytest

import machinarium as mm

from .conftest import run_in_machine


@pytest.mark.parametrize("shared", [True, False])
def test_write_then_read_fifo(shared):
    def body():
        ch = mm.Channel(shared=shared)
        for i in range(10):
            assert ch.write(mm.Msg(1, i)) is True
        assert len(ch) == 10
        return [ch.read(100).data for _ in range(10)]

    assert run_in_machine(body) == list(range(10))


@pytest.mark.parametrize("shared", [True, False])
def test_read_times_out_with_timedout(shared):
    def body():
        ch = mm.Channel(shared=shared)
        t = time.monotonic()
        with pytest.raises(mm.TimedOut):
            ch.read(50)
        return time.monotonic() - t

    assert 0.04 <= run_in_machine(body) < 1.0


def test_read_wakes_on_same_machine_write():
    def body():
        ch = mm.Channel(shared=False)
        mm.Coroutine(lambda: (mm.sleep(10), ch.write(mm.Msg("x", 7))), name="writer")
        return ch.read(1000)

    assert run_in_machine(body) == mm.Msg("x", 7)


def test_cross_machine_write_wakes_reader():
    ch = mm.Channel()
    ready = threading.Event()

    def reader():
        ready.set()
        t = time.monotonic()
        m = ch.read(5000)
        return m, time.monotonic() - t

    def writer():
        ready.wait(5)
        time.sleep(0.05)  # let the reader block first
        ch.write(mm.Msg("hello", 1))

    threading.Thread(target=writer).start()
    msg, waited = run_in_machine(reader)
    assert msg == mm.Msg("hello", 1)
    assert waited < 2.0


def test_many_writers_one_reader_no_loss_fifo_per_writer():
    writers, per_writer = 4, 5000
    ch = mm.Channel()

    def reader():
        threads = [threading.Thread(target=lambda w=w: [ch.write(mm.Msg(w, i)) for i in range(per_writer)])
                   for w in range(writers)]
        for t in threads:
            t.start()
        seen = {w: [] for w in range(writers)}
        for _ in range(writers * per_writer):
            m = ch.read(5000)
            seen[m.type].append(m.data)
        for t in threads:
            t.join()
        with pytest.raises(mm.TimedOut):
            ch.read(20)
        return seen

    seen = run_in_machine(reader)
    for w in range(writers):
        assert seen[w] == list(range(per_writer))


def test_bounded_channel_write_returns_false_when_full():
    ch = mm.Channel(limit=2)
    assert ch.write(mm.Msg(0)) and ch.write(mm.Msg(1))
    assert ch.write(mm.Msg(2)) is False
    assert len(ch) == 2
    assert ch.read_nowait() == mm.Msg(0)
    assert ch.write(mm.Msg(3)) is True


def test_shared_channel_read_from_second_live_machine_is_an_error():
    ch = mm.Channel()
    bound, release = threading.Event(), mm.Event()

    def first():
        with pytest.raises(mm.TimedOut):
            ch.read(10)  # binds the channel to this machine
        bound.set()
        release.wait(5000)

    def second():
        bound.wait(5)
        with pytest.raises(mm.MachineError):
            ch.read(10)
        release.signal()

    m = mm.Machine("first", first).start()
    run_in_machine(second)
    m.join(5000)
    # once the first reader's machine is gone, another machine may take the channel over
    ch.write(mm.Msg("late"))
    assert run_in_machine(lambda: ch.read(100)) == mm.Msg("late")


def test_several_readers_in_one_machine_each_get_one():
    def body():
        ch = mm.Channel()
        got = []
        readers = [mm.Coroutine(lambda: got.append(ch.read(2000).data), name=f"r{i}") for i in range(3)]
        mm.sleep(10)
        for i in range(3):
            ch.write(mm.Msg(0, i))
        for r in readers:
            r.join(2000)
        return sorted(got)

    assert run_in_machine(body) == [0, 1, 2]
