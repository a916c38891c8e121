"""machinarium: machines (OS threads with a gevent hub each), channels, coroutines and IO (mirrors Odyssey third_party/machinarium)."""
from ._clock import time_ms, time_us
from ._state import current_machine, error_hooks, watch_hub_errors
from .channel import Channel, Msg
from .coroutine import Cond, Coroutine, Event, coroutine_create, sleep
from .errors import Cancelled, ConnectionClosed, MachineError, TimedOut
from .machine import SYSTEM_SIGNALS, Machine, machine_create, stop_current
