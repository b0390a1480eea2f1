"""benchmarks/report.py: pytest-benchmark JSON -> markdown, numbers checked.

The JSON is real: a tiny benchmark file run in a subprocess through the real
``benchmarks/conftest.py`` (the ``bench`` fixture, run metadata, copy bandwidth) with
``--benchmark-json``. The report is checked against numbers recomputed from that JSON, then
against hand-set medians, bytes and copy bandwidth written into the same file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

BENCH_DIR = REPO / "benchmarks"

TINY_BENCH = textwrap.dedent("""
    import torch

    def test_tiny_copy(bench):
        x = torch.randn(64, 1024)
        bench(lambda: x.clone(), group="tiny copy", contender="eager",
              bytes_moved=2 * x.numel() * x.element_size())

    def test_tiny_copy_compiled(bench):
        x = torch.randn(64, 1024)
        bench(lambda: x.clone().mul_(1.0), group="tiny copy", contender="compiled",
              bytes_moved=2 * x.numel() * x.element_size())

    def test_tiny_copy_fused(bench):
        x = torch.randn(64, 1024)
        out = torch.empty_like(x)
        bench(lambda: out.copy_(x), group="tiny copy", contender="fused",
              bytes_moved=2 * x.numel() * x.element_size())

    def test_other_group(bench):
        x = torch.randn(32, 32)
        bench(lambda: x + 1, group="other", contender="fused", kind="op")
""")


def _load_report():
    spec = importlib.util.spec_from_file_location("fastdenoise_bench_report", BENCH_DIR / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def real_json(tmp_path_factory) -> dict:
    """A pytest-benchmark JSON from a real run of a tiny bench file through benchmarks/conftest.py."""
    work = tmp_path_factory.mktemp("bench")
    shutil.copy(BENCH_DIR / "conftest.py", work / "conftest.py")
    shutil.copy(BENCH_DIR / "pytest.ini", work / "pytest.ini")
    (work / "bench_tiny.py").write_text(TINY_BENCH)
    out = work / "result.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("FASTDENOISE_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "bench_tiny.py", "-q", "-p", "no:cacheprovider",
         "--bench-device", "cpu", "--bench-rounds", "3", f"--benchmark-json={out}"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return {"path": out, "data": json.loads(out.read_text())}


def parse_tables(md: str) -> dict:
    """``{heading: [row dicts]}`` for every markdown table under a ``### `` heading."""
    tables, heading, header = {}, None, None
    for line in md.splitlines():
        if line.startswith("### "):
            heading, header = line[4:].strip(), None
            tables[heading] = []
        elif heading and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set(line) <= set("|-: "):
                tables[heading].append(dict(zip(header, cells)))
        elif not line.strip():
            header = None
    return tables


def _x(cell: str) -> float:
    assert cell.endswith("×"), cell
    return float(cell[:-1])


def test_real_json_has_the_metadata(real_json):
    data = real_json["data"]
    assert {"machine_info", "commit_info", "benchmarks", "datetime", "version"} <= set(data)
    fd = data["machine_info"]["fastdenoise"]
    for key in ("date", "device", "torch", "triton", "build_info", "git_commit", "copy_gbps"):
        assert key in fd, key
    assert fd["device"] == "cpu" and fd["copy_gbps"] > 0
    assert len(data["benchmarks"]) == 4
    for b in data["benchmarks"]:
        ei = b["extra_info"]
        assert ei["contender"] in ("eager", "compiled", "fused")
        assert ei["copy_gbps"] == fd["copy_gbps"]
        assert b["stats"]["rounds"] == 3 and b["stats"]["median"] > 0


def test_report_numbers_match_the_json(real_json):
    report = _load_report()
    data = real_json["data"]
    md = report.render(report.load([real_json["path"]]))
    tables = parse_tables(md)
    assert set(tables) == {"tiny copy", "other"}

    med = {b["extra_info"]["contender"]: b["stats"]["median"]
           for b in data["benchmarks"] if b["group"] == "tiny copy"}
    by_name = {r["contender"]: r for r in tables["tiny copy"]}
    assert [r["contender"] for r in tables["tiny copy"]] == ["eager", "compiled", "fused"]
    for name, row in by_name.items():
        assert _x(row["vs eager"]) == pytest.approx(med["eager"] / med[name], abs=0.006)
        assert _x(row["vs compiled"]) == pytest.approx(med["compiled"] / med[name], abs=0.006)
        b = next(b for b in data["benchmarks"] if b["extra_info"]["contender"] == name
                 and b["group"] == "tiny copy")
        gbps = b["extra_info"]["bytes_moved"] / med[name] / 1e9
        assert float(row["GB/s"].replace(",", "")) == pytest.approx(gbps, abs=0.051)
        share = 100 * gbps / b["extra_info"]["copy_gbps"]
        assert float(row["share of copy BW"].rstrip("%")) == pytest.approx(share, abs=0.051)
    # A group with no eager / compiled / bytes: dashes, no bandwidth columns.
    (other,) = tables["other"]
    assert other["vs eager"] == "—" and other["vs compiled"] == "—" and "GB/s" not in other
    # Header: device, versions, commit.
    assert "CPU:" in md and "torch " in md and "measured copy bandwidth" in md


def test_report_with_set_numbers(real_json, tmp_path):
    data = json.loads(json.dumps(real_json["data"]))
    for b in data["benchmarks"]:
        if b["group"] != "tiny copy":
            continue
        median = {"eager": 4e-3, "compiled": 2e-3, "fused": 1e-3}[b["extra_info"]["contender"]]
        b["stats"]["median"] = median
        b["extra_info"]["bytes_moved"] = 8_000_000
        b["extra_info"]["copy_gbps"] = 16.0
        b["extra_info"]["peak_memory_bytes"] = 3 * 2**20
        b["extra_info"]["peak_extra_bytes"] = 2**20
    path = tmp_path / "set.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "report.md"
    proc = subprocess.run([sys.executable, str(BENCH_DIR / "report.py"), str(path), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tables = parse_tables(out.read_text())
    rows = {r["contender"]: r for r in tables["tiny copy"]}
    assert rows["eager"]["median"] == "4.000 ms"
    assert rows["fused"]["median"] == "1.000 ms"
    assert rows["fused"]["vs eager"] == "4.00×" and rows["fused"]["vs compiled"] == "2.00×"
    assert rows["compiled"]["vs eager"] == "2.00×" and rows["compiled"]["vs compiled"] == "1.00×"
    assert rows["eager"]["vs compiled"] == "0.50×"
    # 8 MB in 1 ms = 8 GB/s = 50% of 16 GB/s; 8 MB in 4 ms = 2 GB/s = 12.5%.
    assert rows["fused"]["GB/s"] == "8.0" and rows["fused"]["share of copy BW"] == "50.0%"
    assert rows["eager"]["GB/s"] == "2.0" and rows["eager"]["share of copy BW"] == "12.5%"
    assert rows["fused"]["peak MiB"] == "3.0" and rows["fused"]["peak above inputs MiB"] == "1.0"
    summary = out.read_text().split("## Summary", 1)[1].split("## Groups", 1)[0]
    assert "| tiny copy | 4.000 ms | 2.000 ms | 1.000 ms (fused) | 4.00× | 2.00× | 8.0 (50.0%) |" in summary
