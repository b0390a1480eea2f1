#!/usr/bin/env python3
"""Turn pytest-benchmark JSON (``--benchmark-json``) into a markdown report.

    python benchmarks/report.py RESULT.json [MORE.json ...] [-o OUT.md]

The header gives the device, versions, date and commit of the run (from the JSON's
``machine_info["fastdenoise"]``, written by ``benchmarks/conftest.py``, else from
pytest-benchmark's own ``machine_info`` / ``commit_info``) and the measured copy bandwidth. Then
a summary (one line per group) and, per group, a table:

* contender, median time, rounds;
* speedup vs eager and vs compiled: ``median(eager) / median(contender)`` (the same for
  compiled), so > 1 means faster than the baseline;
* achieved GB/s: ``extra_info["bytes_moved"] / median / 1e9`` (bytes read + written, when the
  benchmark records them), and its share of the device's measured copy bandwidth
  (``extra_info["copy_gbps"]``, read + write bytes of ``dst.copy_(src)``);
* PSNR (dB) against the clean image, when the group records it (``extra_info["psnr_db"]``:
  denoisers compared at equal quality);
* peak CUDA memory (MiB) when recorded: the peak during one call, and the part above what was
  allocated before it (workspace + output).

Several JSON files (e.g. the op and the model benchmarks of one run) are merged into one report.
Only stdlib: it runs anywhere the JSON is.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Iterable, Optional

CONTENDER_ORDER = ("eager", "compiled", "fused", "fused_compiled", "fused_triton")
MIB = 2 ** 20


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def load(paths: Iterable[str]) -> dict:
    """Read and merge pytest-benchmark JSON files: ``{"runs": [...], "benchmarks": [...]}``."""
    runs, benches = [], []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        if "benchmarks" not in data or "machine_info" not in data:
            raise ValueError(f"{path}: not a pytest-benchmark JSON (no 'benchmarks' / 'machine_info')")
        runs.append({"path": str(path), "meta": run_meta(data)})
        for b in data["benchmarks"]:
            if b.get("stats") and b["stats"].get("median") is not None:
                benches.append(b)
    return {"runs": runs, "benchmarks": benches}


def run_meta(data: dict) -> dict:
    """Device, versions, date and commit of one JSON file."""
    mi = data.get("machine_info", {})
    fd = dict(mi.get("fastdenoise") or {})
    ci = data.get("commit_info") or {}
    cpu = mi.get("cpu") or {}
    meta = {
        "device": fd.get("device"),
        "gpu": fd.get("gpu"),
        "gpu_capability": fd.get("gpu_capability"),
        "gpu_sms": fd.get("gpu_sms"),
        "gpu_memory_gib": fd.get("gpu_memory_gib"),
        "cuda_driver": fd.get("cuda_driver"),
        "cpu": fd.get("cpu") or cpu.get("brand_raw") or mi.get("processor") or mi.get("machine"),
        "cpu_threads": fd.get("cpu_threads") or cpu.get("count"),
        "python": fd.get("python") or mi.get("python_version"),
        "torch": fd.get("torch"),
        "torch_cuda": fd.get("torch_cuda"),
        "cudnn": fd.get("cudnn"),
        "triton": fd.get("triton"),
        "fastdenoise": fd.get("fastdenoise"),
        "build_info": fd.get("build_info") or {},
        "date": fd.get("date") or data.get("datetime"),
        "commit": fd.get("git_commit") or ci.get("id"),
        "dirty": fd.get("git_dirty") if fd.get("git_dirty") is not None else ci.get("dirty"),
        "copy_gbps": fd.get("copy_gbps"),
        "copy_bytes": fd.get("copy_bytes"),
        "copy_method": fd.get("copy_method"),
        "host": fd.get("host") or mi.get("node"),
    }
    return meta


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------

def contender_of(b: dict) -> str:
    ei = b.get("extra_info") or {}
    if ei.get("contender"):
        return ei["contender"]
    param = b.get("param") or b.get("name", "")
    return param.rsplit("-", 1)[-1].rstrip("]")


def _order_key(name: str):
    return (CONTENDER_ORDER.index(name) if name in CONTENDER_ORDER else len(CONTENDER_ORDER), name)


def groups(benches: list) -> "dict[str, list]":
    """Benchmarks by group, groups in order of first appearance, contenders in a fixed order."""
    out: dict = {}
    for b in benches:
        out.setdefault(b.get("group") or b.get("name"), []).append(b)
    for g in out.values():
        g.sort(key=lambda b: _order_key(contender_of(b)))
    return out


def group_rows(benches: list) -> list:
    """One dict per contender of a group, with every number the tables show (None when n/a)."""
    medians = {contender_of(b): b["stats"]["median"] for b in benches}
    rows = []
    for b in benches:
        ei = b.get("extra_info") or {}
        st = b["stats"]
        median = st["median"]
        name = contender_of(b)
        row = {
            "contender": name,
            "median_s": median,
            "rounds": st.get("rounds"),
            "iqr_s": st.get("iqr"),
            "speedup_vs_eager": (medians["eager"] / median) if "eager" in medians and median > 0 else None,
            "speedup_vs_compiled": (medians["compiled"] / median) if "compiled" in medians and median > 0 else None,
            "gbps": None,
            "copy_share": None,
            "tflops": None,
            "peak_mib": ei["peak_memory_bytes"] / MIB if ei.get("peak_memory_bytes") is not None else None,
            "extra_mib": ei["peak_extra_bytes"] / MIB if ei.get("peak_extra_bytes") is not None else None,
            "graph_breaks": ei.get("graph_breaks"),
            "psnr_db": ei.get("psnr_db"),
        }
        if ei.get("bytes_moved") and median > 0:
            row["gbps"] = ei["bytes_moved"] / median / 1e9
            if ei.get("copy_gbps"):
                row["copy_share"] = row["gbps"] / ei["copy_gbps"]
        if ei.get("flops") and median > 0:
            row["tflops"] = ei["flops"] / median / 1e12
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------

def fmt_time(s: Optional[float]) -> str:
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1.0:
        return f"{s * 1e3:.3f} ms"
    return f"{s:.3f} s"


def fmt_x(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:.2f}×"


def fmt_num(v: Optional[float], digits: int = 1, suffix: str = "") -> str:
    return "—" if v is None else f"{v:,.{digits}f}{suffix}"


def fmt_pct(v: Optional[float]) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _table(header: list, rows: list, numeric: bool = True) -> list:
    """A markdown table; the first column left-aligned, the others right-aligned if ``numeric``."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 or not numeric else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def describe_device(m: dict) -> str:
    if m.get("gpu"):
        bits = [m["gpu"]]
        extra = []
        if m.get("gpu_capability"):
            extra.append(f"sm {m['gpu_capability']}")
        if m.get("gpu_sms"):
            extra.append(f"{m['gpu_sms']} SMs")
        if m.get("gpu_memory_gib"):
            extra.append(f"{m['gpu_memory_gib']} GiB")
        if m.get("cuda_driver"):
            extra.append(f"driver {m['cuda_driver']}")
        return bits[0] + (f" ({', '.join(extra)})" if extra else "")
    cpu = m.get("cpu") or "unknown CPU"
    threads = m.get("cpu_threads")
    return f"CPU: {cpu}" + (f", {threads} threads" if threads else "")


def describe_build(bi: dict) -> str:
    if not bi:
        return "unknown"
    if not bi.get("loaded"):
        return f"_C not loaded ({bi.get('error') or 'no reason recorded'})"
    s = f"_C loaded (built for torch {bi.get('torch_version')}, {bi.get('build_system', '?')}"
    if bi.get("cuda"):
        archs = ";".join(bi.get("cuda_archs") or []) or "default archs"
        s += f", CUDA {bi.get('cuda_version')} for {archs}"
    else:
        s += ", CPU kernels only"
    return s + ")"


def header_lines(runs: list) -> list:
    m = runs[0]["meta"]
    commit = m.get("commit")
    commit_s = "unknown" if not commit else commit[:12] + (" (uncommitted changes)" if m.get("dirty") else "")
    cuda = m.get("torch_cuda")
    versions = f"torch {m.get('torch')}"
    versions += f", CUDA {cuda}" if cuda else ", no CUDA"
    if m.get("cudnn"):
        versions += f", cuDNN {m['cudnn']}"
    versions += f", triton {m.get('triton') or 'absent'}, python {m.get('python')}"
    copy = "not measured"
    if m.get("copy_gbps"):
        copy = f"{m['copy_gbps']:,.1f} GB/s"
        if m.get("copy_bytes"):
            copy += f" ({m.get('copy_method') or 'copy'}, {m['copy_bytes'] / 2**30:.3g} GiB moved)"
    rows = [
        ["device", describe_device(m)],
        ["versions", versions],
        ["fastdenoise", f"{m.get('fastdenoise') or '?'}; {describe_build(m.get('build_info') or {})}"],
        ["date", str(m.get("date"))],
        ["commit", commit_s],
        ["measured copy bandwidth", copy],
    ]
    if len(runs) > 1:
        for r in runs:
            rm = r["meta"]
            rows.append(["source", f"{pathlib.Path(r['path']).name}: {describe_device(rm)}, {rm.get('date')}, "
                                   f"commit {(rm.get('commit') or 'unknown')[:12]}"])
    lines = ["# fastdenoise benchmarks", ""]
    lines += _table(["", ""], [[f"**{k}**", v] for k, v in rows], numeric=False)
    lines += ["", "Times are medians over the timed rounds (warm-up rounds and torch.compile excluded; "
              "on CUDA the device is synchronised around each call). Speedup = median of the baseline / "
              "median of the contender. GB/s = bytes read + written by the op / median; its share is of "
              "the measured copy bandwidth above.", ""]
    return lines


def render(data: dict) -> str:
    runs, benches = data["runs"], data["benchmarks"]
    lines = header_lines(runs)
    if not benches:
        lines += ["No timed benchmarks in the input (was it run with --benchmark-disable?).", ""]
        return "\n".join(lines)
    by_group = groups(benches)

    # Summary: the fastest fused contender of each group.
    summary = []
    for name, group in by_group.items():
        rows = group_rows(group)
        fused = [r for r in rows if r["contender"].startswith("fused")]
        best = min(fused, key=lambda r: r["median_s"]) if fused else None
        get = {r["contender"]: r for r in rows}
        summary.append([
            name,
            fmt_time(get["eager"]["median_s"]) if "eager" in get else "—",
            fmt_time(get["compiled"]["median_s"]) if "compiled" in get else "—",
            f"{fmt_time(best['median_s'])} ({best['contender']})" if best else "—",
            fmt_x(best["speedup_vs_eager"]) if best else "—",
            fmt_x(best["speedup_vs_compiled"]) if best else "—",
            (f"{fmt_num(best['gbps'])} ({fmt_pct(best['copy_share'])})"
             if best and best["gbps"] is not None else "—"),
        ])
    lines += ["## Summary", ""]
    lines += _table(["group", "eager", "compiled", "fused (best)", "vs eager", "vs compiled",
                     "fused GB/s (share of copy)"], summary)
    lines.append("")

    lines += ["## Groups", ""]
    for name, group in by_group.items():
        rows = group_rows(group)
        has_bw = any(r["gbps"] is not None for r in rows)
        has_flops = any(r["tflops"] is not None for r in rows)
        has_mem = any(r["peak_mib"] is not None for r in rows)
        has_psnr = any(r["psnr_db"] is not None for r in rows)
        header = ["contender", "median", "vs eager", "vs compiled"]
        if has_bw:
            header += ["GB/s", "share of copy BW"]
        if has_flops:
            header += ["TFLOP/s"]
        if has_mem:
            header += ["peak MiB", "peak above inputs MiB"]
        if has_psnr:
            header += ["PSNR dB"]
        header += ["rounds"]
        table = []
        for r in rows:
            line = [r["contender"], fmt_time(r["median_s"]), fmt_x(r["speedup_vs_eager"]),
                    fmt_x(r["speedup_vs_compiled"])]
            if has_bw:
                line += [fmt_num(r["gbps"]), fmt_pct(r["copy_share"])]
            if has_flops:
                line += [fmt_num(r["tflops"], 2)]
            if has_mem:
                line += [fmt_num(r["peak_mib"]), fmt_num(r["extra_mib"])]
            if has_psnr:
                line += ["—" if r["psnr_db"] is None else f"{r['psnr_db']:.2f}"]
            line += [str(r["rounds"])]
            table.append(line)
        lines += [f"### {name}", ""] + _table(header, table)
        notes = [f"{r['contender']}: {r['graph_breaks']} graph break(s)" for r in rows
                 if r["graph_breaks"]]
        if notes:
            lines += ["", "Note: " + "; ".join(notes) + "."]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", help="pytest-benchmark JSON file(s) (--benchmark-json)")
    ap.add_argument("-o", "--output", help="write the markdown here (default: stdout)")
    args = ap.parse_args(argv)
    text = render(load(args.json))
    if args.output:
        pathlib.Path(args.output).write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
