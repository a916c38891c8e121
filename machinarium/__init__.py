"""machinarium: machines (OS threads with a gevent hub each), channels, coroutines and IO (mirrors Odyssey third_party/machinarium)."""
