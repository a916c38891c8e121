"""Signals reach the system machine (main thread) as channel messages; nowhere else."""
from __future__ import annotations

import os
import signal

import pytest

import machinarium as mm

from .conftest import run_in_machine


def test_signal_delivered_as_message_to_system_machine():
    def system():
        ch = mm.Channel(shared=False)
        with mm.SignalWatcher(ch, [signal.SIGUSR1, signal.SIGUSR2]):
            worker = mm.Machine("worker", mm.sleep, 60_000).start()  # blocks the signals itself
            os.kill(os.getpid(), signal.SIGUSR1)
            first = ch.read(2000)
            os.kill(os.getpid(), signal.SIGUSR2)
            second = ch.read(2000)
            worker.stop()
            worker.join(2000)
        return first, second

    before = signal.getsignal(signal.SIGUSR1)
    first, second = mm.Machine("system", system).run()
    assert first == mm.Msg(mm.MSG_SIGNAL, signal.SIGUSR1)
    assert second.data == signal.SIGUSR2
    assert signal.getsignal(signal.SIGUSR1) == before  # handlers restored


def test_signal_wait_times_out():
    def system():
        mm.signal_init([signal.SIGUSR2])
        try:
            with pytest.raises(mm.TimedOut):
                mm.signal_wait(20)
            os.kill(os.getpid(), signal.SIGUSR2)
            return mm.signal_wait(2000)
        finally:
            mm.signal_free()

    assert mm.Machine("system", system).run() == signal.SIGUSR2


def test_signal_watcher_outside_main_thread_is_an_error():
    def body():
        with pytest.raises(mm.MachineError):
            mm.SignalWatcher(signals=[signal.SIGUSR1])

    run_in_machine(body)
