"""Comparing step records: normalization, differences, known differences, the table and JSON."""
from __future__ import annotations

import fnmatch
import json
import re

_IDS = [(re.compile(r"\bc[0-9a-f]{12}\b"), "c<id>"), (re.compile(r"\bs[0-9a-f]{12}\b"), "s<id>")]


def normalize(value):
    """Client and server ids (`c0123456789ab`) become `c<id>` / `s<id>`: they differ per run."""
    if isinstance(value, str):
        for rx, repl in _IDS:
            value = rx.sub(repl, value)
        return value
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    return value


def flatten(records: list[dict]) -> dict[str, object]:
    """{'3 connect c.error.sqlstate': '28P01', ...}; lists stay whole values."""
    out: dict[str, object] = {}

    def walk(prefix: str, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            out[prefix] = value

    for i, rec in enumerate(records):
        label = rec.get("step", str(i))
        for k, v in rec.items():
            if k != "step":
                walk(f"{label}.{k}", v)
    return out


MISSING = "<absent>"


def differences(ours: list[dict], theirs: list[dict], only_steps: set | None = None) -> list[dict]:
    """[{field, ours, reference}] where the normalized records differ. `only_steps` limits the
    comparison to records of those step kinds (for the PostgreSQL-direct check)."""
    a, b = flatten(normalize(ours)), flatten(normalize(theirs))
    out = []
    for key in list(dict.fromkeys([*a, *b])):
        if only_steps is not None:
            kind = key.split(".", 1)[0].split(" ")[1] if " " in key.split(".", 1)[0] else ""
            if kind not in only_steps:
                continue
        va, vb = a.get(key, MISSING), b.get(key, MISSING)
        if va != vb:
            out.append({"field": key, "ours": va, "reference": vb})
    return out


def classify(scenario: str, diffs: list[dict], known: list[dict]) -> None:
    """Marks each difference with `known` (the reason) when known_differences.yaml lists it."""
    for d in diffs:
        d["known"] = None
        d["open"] = False
        for entry in known:
            if not fnmatch.fnmatchcase(scenario, entry["scenario"]):
                continue
            if fnmatch.fnmatchcase(d["field"], entry.get("field", "*")):
                d["known"] = entry["why"]
                d["open"] = bool(entry.get("open"))
                break


def status_of(result: dict) -> str:
    if result.get("error"):
        return "ERROR"
    diffs = result["differences"]
    if any(d["known"] is None for d in diffs):
        return "DIFF"
    if any(d["open"] for d in diffs):
        return "open"
    return "known" if diffs else "same"


def _cell(value, width: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[:width - 1] + "…"


def table(results: list[dict], against: str, verbose: bool = False) -> str:
    """The side-by-side text: one line per scenario, then each difference under it."""
    lines = []
    w = max([len(r["scenario"]) for r in results] + [8])
    lines.append(f"{'scenario':<{w}}  status  ours vs {against}")
    lines.append("-" * (w + 40))
    counts: dict[str, int] = {}
    for r in results:
        st = status_of(r)
        counts[st] = counts.get(st, 0) + 1
        error = r.get("error")
        if error:
            error = " / ".join(line.strip() for line in error.strip().splitlines()[-3:])
        lines.append(f"{r['scenario']:<{w}}  {st:<6}" + (f"  {_cell(error, 160)}" if error else ""))
        shown = None
        for d in r["differences"]:
            if d["known"] is not None and not verbose:
                if d["known"] != shown:          # one line per reason, not per field
                    lines.append(f"{'':<{w}}    {'open' if d['open'] else 'known'}: {_cell(d['known'], 110)}")
                shown = d["known"]
                continue
            lines.append(f"{'':<{w}}    {d['field']}")
            ours, ref = d["ours"], d["reference"]
            if isinstance(ours, list) and isinstance(ref, list) and ours and ref:
                # long lists (columns, rows): show what is only on one side
                ours = [v for v in ours if v not in d["reference"]] or "(nothing else)"
                ref = [v for v in ref if v not in d["ours"]] or "(nothing else)"
                if ours == ref == "(nothing else)":
                    ours, ref = "(same items, other order)", ""
            lines.append(f"{'':<{w}}      ours:      {_cell(ours, 100)}")
            lines.append(f"{'':<{w}}      {against + ':':<10} {_cell(ref, 100)}")
    lines.append("-" * (w + 40))
    lines.append(f"{len(results)} scenarios: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return "\n".join(lines)


def as_json(results: list[dict], against: str) -> str:
    out = {"against": against,
           "scenarios": [{"scenario": r["scenario"], "status": status_of(r), "error": r.get("error"),
                          "checked_against_postgres": bool(r.get("direct")),
                          "differences": r["differences"]} for r in results]}
    out["summary"] = {}
    for s in out["scenarios"]:
        out["summary"][s["status"]] = out["summary"].get(s["status"], 0) + 1
    return json.dumps(out, indent=2, ensure_ascii=False)


def failed(results: list[dict]) -> bool:
    return any(status_of(r) in ("DIFF", "ERROR") for r in results)
