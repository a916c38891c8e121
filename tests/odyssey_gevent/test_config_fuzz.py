"""Fuzzing the reader: whatever the input, load() returns a Config or raises ConfigError."""
from __future__ import annotations

import pathlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from odyssey_gevent.config import keywords, reader
from odyssey_gevent.config.dump import dump_config
from odyssey_gevent.config.model import Config, ConfigError

SAMPLE = (pathlib.Path(__file__).resolve().parents[2] / "etc" / "odyssey.conf").read_text()
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WORDS = sorted(keywords.ALL_KEYWORDS) + ['"x"', '"*"', '"10.0.0.0/8"', "{", "}", "1", "-1",
                                         "0644", "1kb", '"auto"', "#", "\n", '"', "'", "\\"]


def check(text: str) -> None:
    try:
        cfg = reader.loads(text, "fuzz.conf")
    except ConfigError as e:
        assert e.errors and all(isinstance(x, str) and x for x in e.errors)
        return
    assert isinstance(cfg, Config)
    dump_config(cfg)  # a loadable config can always be dumped


@FUZZ
@given(st.text(max_size=300))
def test_random_text(text):
    check(text)


@FUZZ
@given(st.lists(st.sampled_from(WORDS), max_size=60))
def test_random_tokens(words):
    check(" ".join(words))


@FUZZ
@given(st.data())
def test_mutated_sample(data):
    text = SAMPLE
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["delete", "insert", "replace", "swap_lines", "truncate"]))
        pos = data.draw(st.integers(0, len(text)))
        if op == "delete":
            n = data.draw(st.integers(1, 40))
            text = text[:pos] + text[pos + n:]
        elif op == "insert":
            text = text[:pos] + data.draw(st.sampled_from(WORDS + [" ", "yes", "no"])) + text[pos:]
        elif op == "replace":
            text = text[:pos] + data.draw(st.text(max_size=3)) + text[pos + 1:]
        elif op == "swap_lines":
            lines = text.split("\n")
            i = data.draw(st.integers(0, len(lines) - 1))
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        else:
            text = text[:pos]
    check(text)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "f.conf"
    path.write_bytes(data)
    try:
        reader.load(str(path))
    except ConfigError:
        pass


def test_sample_is_valid():
    assert reader.loads(SAMPLE, "sample.conf").rules


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters='"\\'), max_size=40))
def test_random_include_paths(path):
    if path in ("/dev/stdin", "/dev/tty") or path.startswith(("/dev/", "/proc/", "/sys/")):
        return  # never read device files in a test
    check(f'include "{path}"\n')


def test_odd_inputs():
    for text in ['include "a\x00b"', 'include "' + "x" * 5000 + '"', 'include "/"', 'include ""',
                 'database "d" {' * 3000, "{" * 5000, "}" * 100, '"' * 3, "\x00\x01\x02",
                 "workers 1" + "0" * 400]:
        check(text)
