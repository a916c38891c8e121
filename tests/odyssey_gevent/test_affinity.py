"""cpu_affinity's grammar, C Odyssey's error texts, and which CPUs a worker gets (affinity.py)."""
import pytest

from odyssey_gevent import affinity as A
from odyssey_gevent.config.model import ConfigError
from tests.odyssey_gevent.test_config_support import load_text, make_config


@pytest.mark.parametrize("text,mode", [("off", A.OFF), ("no", A.OFF), ("auto", A.AUTO), ("yes", A.AUTO)])
def test_modes(text, mode):
    assert A.parse(text) == A.Affinity(mode)


def test_rules_with_and_without_an_index():
    got = A.parse("worker[1]:2 \t handshake:0-1,5 worker:3,7-8")
    assert got.mode == A.RULES
    assert got.rules == (A.Rule("worker", 1, frozenset({2})), A.Rule("handshake", None, frozenset({0, 1, 5})),
                         A.Rule("worker", None, frozenset({3, 7, 8})))
    assert A.parse("worker[+2]:0").rules[0].index == 2          # C reads the index with strtol


@pytest.mark.parametrize("text,message", [
    ("", "can't parse affinity config: empty rules"),
    ("  ", "can't parse affinity config: empty rules"),
    ("0-3", "can't parse affinity rule '0-3'"),
    ("Off", "can't parse affinity rule 'Off'"),
    ("workers:1", "can't parse affinity rule 'workers:1'"),
    ("worker1", "can't parse affinity rule 'worker1'"),
    ("worker[]:1", "can't parse affinity rule 'worker[]:1'"),
    ("worker[-1]:1", "can't parse affinity rule 'worker[-1]:1'"),
    ("worker[1:1", "can't parse affinity rule 'worker[1:1'"),
    ("worker:", "can't convert '' to cpuset"),
    ("worker:1,", "can't convert '1,' to cpuset"),
    ("worker:3-1", "can't convert '3-1' to cpuset"),
    ("worker:-1", "can't convert '-1' to cpuset"),
    ("worker:1-", "can't convert '1-' to cpuset"),
    ("worker:1024", "can't convert '1024' to cpuset"),
    ("worker:a", "can't convert 'a' to cpuset"),
    ("worker:1 worker:2", "rule 'worker:2' duplicated"),
    ("worker[0]:1 worker[0]:2", "rule 'worker[0]:2' duplicated"),
    (" ".join(f"worker[{i}]:0" for i in range(129)), "can't parse affinity config: too many rules"),
])
def test_bad_values_get_c_odysseys_messages(text, message):
    with pytest.raises(A.AffinityError) as e:
        A.parse(text)
    assert str(e.value) == message


def test_a_workers_cpus():
    rules = A.parse("worker:2-3 worker[1]:1 handshake:0")
    assert A.cpus_for(rules, "worker", 1, 4) == {1}             # its own rule, wherever it stands
    assert A.cpus_for(rules, "worker", 0, 4) == {2, 3}          # the role's rule
    assert A.cpus_for(A.parse("worker[0]:1"), "worker", 1, 4) is None    # no rule: left free
    assert A.cpus_for(A.parse("off"), "worker", 0, 4) is None
    # auto: CPU 0 left to the rest, the workers round the others; one CPU: CPU 0
    assert [A.cpus_for(A.parse("auto"), "worker", w, 4) for w in range(4)] == [{1}, {2}, {3}, {1}]
    assert A.cpus_for(A.parse("yes"), "worker", 3, 2) == {1}
    assert A.cpus_for(A.parse("auto"), "worker", 0, 1) == {0}


def test_cpusets_print_as_ranges():
    assert A.cpuset_str({0, 1, 2, 3, 8}) == "0-3,8"
    assert A.cpuset_str({5}) == "5"
    assert A.cpuset_str({1, 3, 4}) == "1,3-4"


def test_a_bad_value_is_a_config_error_at_its_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, make_config(globals_='cpu_affinity "worker:1,"'))
    assert f"{tmp_path / 'odyssey.conf'}:2:" in str(e.value)
    assert "cpu_affinity: can't convert '1,' to cpuset" in str(e.value)
    cfg = load_text(tmp_path, make_config(globals_='cpu_affinity "worker[0]:0 worker:1"'))
    assert cfg.cpu_affinity == "worker[0]:0 worker:1"
