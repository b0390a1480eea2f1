#!/usr/bin/env python3
"""DRAM bytes each op really moves, from Nsight Compute, against the minimum the benchmark names.

    python benchmarks/ncu_report.py NCU.csv CASES.jsonl [-o OUT.md]

``CASES.jsonl`` is written by the benchmarks run with ``--bench-ncu-log CASES.jsonl`` under
``ncu --profile-from-start off`` (see ``benchmarks/conftest.py``): one line per profiled call,
in order, each call opened by a marker kernel (ATen's ``spin_kernel``, from
``torch.cuda._sleep``). ``NCU.csv`` is that profile exported with ``ncu --import REPORT --csv``
(the details page, one row per kernel and metric) or ``--page raw`` (one row per kernel, one
column per metric); units as printed (``--print-units base`` or ncu's scaled ones) are
converted. The metrics used: ``dram__bytes_read.sum``, ``dram__bytes_write.sum`` and
``gpu__time_duration.sum``.

Per benchmark group, one row per contender: kernels launched, DRAM bytes read and written
(summed over its kernels), their total against the benchmark's ``bytes_moved`` (the op's
minimum traffic: input read once, output written once, or the two-pass minimum for MDTA), and
the DRAM throughput over ncu's kernel time. ncu flushes the caches before each kernel it
profiles (its default ``--cache-control all``), so every kernel starts from a cold L2: the
bytes are what a kernel pulls from DRAM on its own. A ratio near 1.0 means the kernel reads
and writes each byte once. A call that raised inside the profiled range (its line in the log
carries ``error``) is listed as failed.

Only stdlib: it runs anywhere the two files are.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import pathlib
import sys
from typing import Optional

MARKER = "spin_kernel"
READ, WRITE, TIME = "dram__bytes_read.sum", "dram__bytes_write.sum", "gpu__time_duration.sum"
METRICS = (READ, WRITE, TIME)
CONTENDER_ORDER = ("eager", "compiled", "fused", "fused_input", "fused_compiled", "fused_triton")

#: unit -> factor to bytes or to seconds. ncu scales byte units by powers of 1000 (SI).
UNITS = {
    "byte": 1.0, "bytes": 1.0, "b": 1.0,
    "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "tbyte": 1e12,
    "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
    "kib": 2.0 ** 10, "mib": 2.0 ** 20, "gib": 2.0 ** 30,
    "nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3, "second": 1.0,
    "ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0,
}


class NcuReportError(ValueError):
    """The CSV or the case log cannot be read, or they do not pair up."""


# ---------------------------------------------------------------------------------------------
# Reading ncu's CSV
# ---------------------------------------------------------------------------------------------

def parse_value(text: str, unit: str, metric: str) -> Optional[float]:
    """A metric value in base units (bytes, seconds); None for ncu's "n/a"."""
    t = (text or "").strip()
    if t in ("", "n/a", "N/A"):
        return None
    try:
        v = float(t.replace(",", ""))
    except ValueError:
        raise NcuReportError(f"metric {metric}: value {text!r} is not a number") from None
    u = (unit or "").strip()
    if not u:
        return v
    factor = UNITS.get(u.lower())
    if factor is None:
        raise NcuReportError(f"metric {metric}: unknown unit {unit!r} (known: {', '.join(sorted(UNITS))})")
    return v * factor


def read_kernels(text: str) -> list:
    """The profiled kernels in launch order: [{"id", "name", metric: value, ...}]."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith('"ID"')), None)
    if start is None:
        raise NcuReportError('no CSV header (a line starting with "ID") in the ncu output: was it '
                             "exported with `ncu --import REPORT --csv`?")
    rows = list(csv.reader(io.StringIO("\n".join(lines[start:]))))
    header, body = rows[0], [r for r in rows[1:] if r]
    col = {name: i for i, name in enumerate(header)}
    for need in ("ID", "Kernel Name"):
        if need not in col:
            raise NcuReportError(f"ncu CSV header has no {need!r} column: {header}")
    kernels: dict = {}

    def kernel(row):
        kid = row[col["ID"]]
        if kid not in kernels:
            kernels[kid] = {"id": kid, "name": row[col["Kernel Name"]]}
        return kernels[kid]

    if "Metric Name" in col:  # details page: one row per kernel and metric
        for need in ("Metric Unit", "Metric Value"):
            if need not in col:
                raise NcuReportError(f"ncu CSV header has {'Metric Name'!r} but no {need!r} column")
        for row in body:
            name = row[col["Metric Name"]]
            if name in METRICS:
                kernel(row)[name] = parse_value(row[col["Metric Value"]], row[col["Metric Unit"]], name)
    else:  # raw page: one row per kernel, a column per metric, maybe a row of units first
        missing = [m for m in METRICS if m not in col]
        if missing:
            raise NcuReportError(f"ncu CSV has no column for {missing}: profile with --metrics "
                                 f"{','.join(METRICS)}")
        units = {m: "" for m in METRICS}
        if body and not body[0][col["ID"]].strip():
            units = {m: body[0][col[m]] for m in METRICS}
            body = body[1:]
        for row in body:
            k = kernel(row)
            for m in METRICS:
                k[m] = parse_value(row[col[m]], units[m], m)
    out = list(kernels.values())
    for k in out:
        missing = [m for m in METRICS if m not in k]
        if missing:
            raise NcuReportError(f"kernel {k['id']} ({k['name']}) has no value for {missing}: profile "
                                 f"with --metrics {','.join(METRICS)}")
    return out


def split_at_markers(kernels: list) -> list:
    """The kernels of each profiled call: the runs that follow each marker kernel."""
    segments: list = []
    for k in kernels:
        if MARKER in k["name"]:
            segments.append([])
        elif not segments:
            raise NcuReportError(f"kernel {k['id']} ({k['name']}) was profiled before any marker "
                                 f"({MARKER}): was ncu run with --profile-from-start off?")
        else:
            segments[-1].append(k)
    return segments


# ---------------------------------------------------------------------------------------------
# Pairing with the case log
# ---------------------------------------------------------------------------------------------

def read_cases(text: str) -> list:
    cases = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise NcuReportError(f"case log line {n}: not JSON ({e})") from None
        for need in ("group", "contender"):
            if need not in rec:
                raise NcuReportError(f"case log line {n}: no {need!r} field")
        cases.append(rec)
    return cases


def pair(kernels: list, cases: list) -> list:
    segments = split_at_markers(kernels)
    if len(segments) != len(cases):
        raise NcuReportError(f"{len(segments)} marker kernels in the ncu profile but {len(cases)} lines "
                             "in the case log: they come from different runs, or a profiled call "
                             "failed before its line was written")
    out = []
    for case, seg in zip(cases, segments):
        read = sum(k[READ] or 0.0 for k in seg)
        write = sum(k[WRITE] or 0.0 for k in seg)
        secs = sum(k[TIME] or 0.0 for k in seg)
        out.append({**case, "kernels": seg, "read": read, "write": write, "seconds": secs})
    return out


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------

def _mb(v: Optional[float]) -> str:
    return "—" if v is None else f"{v / 1e6:,.1f}"


def _short(name: str, width: int = 48) -> str:
    name = name.replace("|", "/")
    return name if len(name) <= width else name[: width - 1] + "…"


def _kernel_list(seg: list) -> str:
    counts: dict = {}
    for k in seg:
        counts[k["name"]] = counts.get(k["name"], 0) + 1
    return ", ".join(f"`{_short(n)}`" + (f" ×{c}" if c > 1 else "") for n, c in counts.items()) or "none"


def render(results: list) -> str:
    meta = next((r.get("meta") for r in results if r.get("meta")), {}) or {}
    commit = meta.get("git_commit")
    commit_s = "unknown" if not commit else commit[:12] + (" (uncommitted changes)" if meta.get("git_dirty") else "")
    rows = [
        ["device", f"{meta.get('gpu') or '?'} (sm {meta.get('gpu_capability') or '?'}, driver "
                   f"{meta.get('cuda_driver') or '?'})"],
        ["versions", f"torch {meta.get('torch')}, CUDA {meta.get('torch_cuda')}, triton {meta.get('triton')}, "
                     f"python {meta.get('python')}"],
        ["date", str(meta.get("date"))],
        ["commit", commit_s],
        ["metrics", f"`{READ}`, `{WRITE}`, `{TIME}` (Nsight Compute, caches flushed before each kernel, "
                    "clocks not locked)"],
    ]
    lines = ["# fastdenoise: DRAM traffic per op (Nsight Compute)", "", "|  |  |", "|---|---|"]
    lines += [f"| **{k}** | {v} |" for k, v in rows]
    lines += ["", "One call per contender, after a warm call. MB = 10^6 bytes. *minimum*: the bytes the "
              "benchmark names as the op's least traffic (blank where it names none); *ratio*: DRAM "
              "read + written / minimum. GB/s: DRAM bytes over the summed kernel time ncu measured.", ""]

    by_group: dict = {}
    for r in results:
        by_group.setdefault(r["group"], []).append(r)
    order = {c: i for i, c in enumerate(CONTENDER_ORDER)}
    lines += ["## Summary", "",
              "| group | contender | kernels | read MB | written MB | total MB | minimum MB | ratio | "
              "kernel time | GB/s |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for group, rs in by_group.items():
        for r in sorted(rs, key=lambda r: (order.get(r["contender"], len(order)), r["contender"])):
            total = r["read"] + r["write"]
            minimum = r.get("bytes_moved")
            ratio = f"{total / minimum:.2f}" if minimum else "—"
            secs = r["seconds"]
            t = "—" if not secs else (f"{secs * 1e3:.3f} ms" if secs >= 1e-3 else f"{secs * 1e6:.1f} µs")
            gbps = f"{total / secs / 1e9:,.0f}" if secs else "—"
            if r.get("error"):
                lines.append(f"| {group} | {r['contender']} | {len(r['kernels'])} | call failed: "
                             f"{_short(r['error'], 80)} | | | | | | |")
                continue
            lines.append(f"| {group} | {r['contender']} | {len(r['kernels'])} | {_mb(r['read'])} | "
                         f"{_mb(r['write'])} | {_mb(total)} | {_mb(minimum)} | {ratio} | {t} | {gbps} |")
    lines += ["", "## Kernels per call", "", "| group | contender | kernels |", "|---|---|---|"]
    for group, rs in by_group.items():
        for r in sorted(rs, key=lambda r: (order.get(r["contender"], len(order)), r["contender"])):
            lines.append(f"| {group} | {r['contender']} | {_kernel_list(r['kernels'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", help="ncu --import REPORT --csv output")
    ap.add_argument("cases", help="the JSON lines written by --bench-ncu-log")
    ap.add_argument("-o", "--output", help="write the markdown here (default: stdout)")
    args = ap.parse_args(argv)
    try:
        results = pair(read_kernels(pathlib.Path(args.csv).read_text(encoding="utf-8", errors="replace")),
                       read_cases(pathlib.Path(args.cases).read_text(encoding="utf-8")))
    except (OSError, NcuReportError) as e:
        print(f"ncu_report: {e}", file=sys.stderr)
        return 1
    md = render(results)
    if args.output:
        pathlib.Path(args.output).write_text(md, encoding="utf-8")
    else:
        sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
