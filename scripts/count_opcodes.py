"""Python bytecodes the pooler runs per pgbench transaction, per function.

    python scripts/count_opcodes.py [--clients 10] [--mode simple] [--connect]
        [--transactions 2000] [--auth none|md5|scram] [--top 40] [--lines 30]

count_instructions.py says how many machine instructions a transaction costs; this says where
in our Python code they start: it runs the pooler with a trace function that counts every
bytecode each code object executes (sys.settrace with f_trace_opcodes), switched on only while
pgbench runs the counted transactions, and prints per transaction: bytecodes and calls of
each function, most bytecodes first. Tracing makes the pooler slow, and 3.11 does not
specialize while tracing, so the counts say what runs, not what it costs: decide with
count_instructions.py. Same config and options as count_instructions.py. --lines N also prints
the N source lines that run the most bytecodes (where inside a long function the work is).
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def make_tracer(flag: str, counts: collections.Counter, calls: collections.Counter,
                lines: collections.Counter | None = None):
    """A sys.settrace function that, while the file `flag` exists, counts the bytecodes
    (counts) and calls (calls) of each code object it sees called, and with `lines` the
    bytecodes of each (code object, line number)."""
    exists = os.path.exists

    def local(frame, event, arg):
        if event == "opcode":
            counts[frame.f_code] += 1
        return local

    def local_lines(frame, event, arg):
        if event == "opcode":
            counts[frame.f_code] += 1
            lines[frame.f_code, frame.f_lineno] += 1
        return local_lines

    if lines is not None:
        local = local_lines

    def on_call(frame, event, arg):
        if not exists(flag):
            return None
        frame.f_trace_opcodes = True
        calls[frame.f_code] += 1
        return local

    return on_call


def traced_pooler(flag: str, out: str, argv: list, by_line: bool = False) -> None:
    """Run the pooler (argv: its command line) counting bytecodes while `flag` exists; write
    `count<TAB>calls<TAB>file:line:name` lines to `out` at exit (by_line: then
    `count<TAB>L<TAB>file:line:name` lines, one per source line run)."""
    import atexit
    import runpy
    import threading

    counts, calls = collections.Counter(), collections.Counter()
    lines = collections.Counter() if by_line else None
    on_call = make_tracer(flag, counts, calls, lines)

    def dump():
        with open(out, "w") as f:
            for code, n in counts.most_common():
                f.write(f"{n}\t{calls[code]}\t{code.co_filename}:{code.co_firstlineno}:{code.co_name}\n")
            for (code, line), n in (lines or {}).items():
                f.write(f"{n}\tL\t{code.co_filename}:{line}:{code.co_name}\n")

    atexit.register(dump)
    threading.settrace(on_call)
    sys.settrace(on_call)
    sys.argv = ["odyssey_gevent", *argv]
    runpy.run_module("odyssey_gevent", run_name="__main__")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--traced"], ["--traced-lines"]):
        traced_pooler(argv[1], argv[2], argv[3:], by_line=argv[0] == "--traced-lines")
        return 0
    from scripts.count_instructions import cell_name, parse_args, pgbench, warmed_pooler

    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--top", type=int, default=40, help="functions to print (default 40)")
    own.add_argument("--lines", type=int, default=0,
                     help="also print the source lines that run the most bytecodes (this many)")
    mine, rest = own.parse_known_args(argv)
    a = parse_args(rest)
    work = tempfile.mkdtemp(prefix="odyssey-gevent-opcodes-")
    flag, out = os.path.join(work, "on"), os.path.join(work, "counts")
    try:
        traced = "--traced-lines" if mine.lines else "--traced"
        binary = f"{sys.executable} {os.path.abspath(__file__)} {traced} {flag} {out}"
        with warmed_pooler(a, binary, start_timeout=60) as (pooler, user):
            open(flag, "w").close()
            n = pgbench(a, pooler.port, a.transactions, user)
            os.unlink(flag)
            pooler.stop()           # the pooler writes its counts at exit
        rows, line_rows = [], []
        with open(out) as f:
            for line in f:
                count, ncalls, name = line.rstrip("\n").split("\t")
                name = name.replace(REPO + os.sep, "")
                if ncalls == "L":
                    line_rows.append((int(count), name))
                else:
                    rows.append((int(count), int(ncalls), name))
        total = sum(r[0] for r in rows)
        print(f"odyssey-gevent, pgbench -S {cell_name(a)}: {total / n:,.0f} bytecodes per transaction "
              f"({n:,} transactions)")
        print(f"{'bytecodes':>10} {'calls':>7}  function (per transaction)")
        for count, ncalls, name in rows[:mine.top]:
            print(f"{count / n:10.1f} {ncalls / n:7.2f}  {name}")
        if mine.lines:
            print(f"{'bytecodes':>10}  source line (per transaction)")
            for count, name in sorted(line_rows, reverse=True)[:mine.lines]:
                print(f"{count / n:10.1f}  {name}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
