"""benchmarks/ncu_report.py and the ``--bench-ncu-log`` protocol of benchmarks/conftest.py.

No GPU here, so the ncu CSV is built in the tests, in the two layouts ncu exports (the details
page: a row per kernel and metric, with thousands separators and scaled units; the raw page: a
row per kernel, a column per metric, a row of units), and the profiled call's sequence of CUDA
calls is recorded with the CUDA functions replaced.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

BENCH_DIR = REPO / "benchmarks"


def _load(name: str, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ncu_report():
    return _load("fastdenoise_ncu_report", BENCH_DIR / "ncu_report.py")


DETAILS_HEADER = ["ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream",
                  "Block Size", "Grid Size", "Device", "CC", "Section Name", "Metric Name", "Metric Unit",
                  "Metric Value"]

# (kernel name, bytes read, bytes written, seconds) in launch order: two profiled calls.
KERNELS = [
    ("at::cuda::<unnamed>::spin_kernel(long)", 0, 0, 2.0e-6),
    ("_layer_norm2d_nchw_kernel", 132_710_400, 132_710_400, 121.5e-6),
    ("at::cuda::<unnamed>::spin_kernel(long)", 0, 0, 2.0e-6),
    ("void at::native::reduce_kernel<512, 1>(...)", 265_420_800, 4_096, 80.25e-6),
    ("void at::native::elementwise_kernel<128, 4>(...)", 531_000_000, 265_420_800, 210.0e-6),
    ("void at::native::elementwise_kernel<128, 4>(...)", 265_420_800, 265_420_800, 170.0e-6),
]


def _fmt(v: float, decimals: int = 2) -> str:
    return f"{v:,.{decimals}f}"  # ncu's thousands separators


def details_csv(kernels, scaled: bool) -> str:
    """The details page as ``ncu --import R --csv`` prints it; ``scaled``: ncu's automatic units."""
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
    w.writerow(DETAILS_HEADER)
    for i, (name, rd, wr, secs) in enumerate(kernels):
        common = [str(i), "4242", "python3", "127.0.0.1", name, "1", "7", "(256, 1, 1)", "(8100, 1, 1)", "0",
                  "9.0", "Command line profiler metrics"]
        if scaled:
            w.writerow(common + ["dram__bytes_read.sum", "Mbyte", _fmt(rd / 1e6, 6)])
            w.writerow(common + ["dram__bytes_write.sum", "Kbyte", _fmt(wr / 1e3, 3)])
            w.writerow(common + ["gpu__time_duration.sum", "usecond", _fmt(secs * 1e6, 3)])
        else:
            w.writerow(common + ["dram__bytes_read.sum", "byte", _fmt(rd, 0)])
            w.writerow(common + ["dram__bytes_write.sum", "byte", _fmt(wr, 0)])
            w.writerow(common + ["gpu__time_duration.sum", "nsecond", _fmt(secs * 1e9, 0)])
    return "==PROF== Connected to process 4242 (/usr/bin/python3)\n" + buf.getvalue()


def raw_csv(kernels) -> str:
    """The raw page (``--page raw``): a column per metric, a row of units under the header."""
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
    w.writerow(["ID", "Kernel Name", "Block Size", "dram__bytes_read.sum", "dram__bytes_write.sum",
                "gpu__time_duration.sum"])
    w.writerow(["", "", "", "Gbyte", "byte", "msecond"])
    for i, (name, rd, wr, secs) in enumerate(kernels):
        w.writerow([str(i), name, "(128, 1, 1)", repr(rd / 1e9), _fmt(wr, 0), repr(secs * 1e3)])
    return buf.getvalue()


CASES = [
    {"group": "ln_nafnet 1x64x1080x1920 float16", "contender": "fused", "bytes_moved": 2 * 132_710_400,
     "meta": {"gpu": "NVIDIA H100 80GB HBM3", "gpu_capability": "9.0", "torch": "2.11.0+cu130",
              "git_commit": "0123456789abcdef", "git_dirty": False}},
    {"group": "ln_nafnet 1x64x1080x1920 float16", "contender": "eager", "bytes_moved": 2 * 132_710_400},
]


def _summary(md: str) -> dict:
    """``{(group, contender): row}`` from the Summary table."""
    rows, header, inside = {}, None, False
    for line in md.splitlines():
        if line.startswith("## "):
            inside = line == "## Summary"
            header = None
            continue
        if inside and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set(line) <= set("|-: "):
                row = dict(zip(header, cells))
                rows[(row["group"], row["contender"])] = row
    return rows


def _expected(first: int, last: int):
    rd = sum(k[1] for k in KERNELS[first:last])
    wr = sum(k[2] for k in KERNELS[first:last])
    secs = sum(k[3] for k in KERNELS[first:last])
    return rd, wr, secs


@pytest.mark.parametrize("layout", ["details-base", "details-scaled", "raw"])
def test_report_sums_each_call_and_divides_by_the_minimum(ncu_report, layout):
    text = {"details-base": lambda: details_csv(KERNELS, scaled=False),
            "details-scaled": lambda: details_csv(KERNELS, scaled=True),
            "raw": lambda: raw_csv(KERNELS)}[layout]()
    kernels = ncu_report.read_kernels(text)
    assert [k["name"] for k in kernels] == [k[0] for k in KERNELS]
    for k, (_, rd, wr, secs) in zip(kernels, KERNELS):
        assert k["dram__bytes_read.sum"] == pytest.approx(rd, rel=1e-9, abs=1e-3)
        assert k["dram__bytes_write.sum"] == pytest.approx(wr, rel=1e-9, abs=1e-3)
        assert k["gpu__time_duration.sum"] == pytest.approx(secs, rel=1e-9)

    results = ncu_report.pair(kernels, [dict(c) for c in CASES])
    assert [len(r["kernels"]) for r in results] == [1, 3]
    md = ncu_report.render(results)
    rows = _summary(md)
    for case, (first, last) in zip(CASES, [(1, 2), (3, 6)]):
        rd, wr, secs = _expected(first, last)
        row = rows[(case["group"], case["contender"])]
        assert row["kernels"] == str(last - first)
        assert float(row["read MB"].replace(",", "")) == pytest.approx(rd / 1e6, abs=0.05)
        assert float(row["written MB"].replace(",", "")) == pytest.approx(wr / 1e6, abs=0.05)
        assert float(row["total MB"].replace(",", "")) == pytest.approx((rd + wr) / 1e6, abs=0.05)
        assert float(row["ratio"]) == pytest.approx((rd + wr) / case["bytes_moved"], abs=0.005)
        assert float(row["GB/s"].replace(",", "")) == pytest.approx((rd + wr) / secs / 1e9, abs=0.5)
    # the fused call moves its minimum; the eager one six times it
    assert rows[(CASES[0]["group"], "fused")]["ratio"] == "1.00"
    assert rows[(CASES[1]["group"], "eager")]["ratio"] == "6.00"
    assert "NVIDIA H100 80GB HBM3" in md and "0123456789ab" in md
    # eager's two identical elementwise launches are listed once, with their count
    assert "×2" in md


def test_report_lists_contenders_in_a_fixed_order(ncu_report):
    md = ncu_report.render(ncu_report.pair(ncu_report.read_kernels(details_csv(KERNELS, scaled=False)),
                                           [dict(c) for c in CASES]))
    summary = md.split("## Summary", 1)[1].split("## Kernels", 1)[0]
    assert summary.index("| eager |") < summary.index("| fused |")


def test_report_without_a_minimum_leaves_the_ratio_blank(ncu_report):
    cases = [dict(CASES[0], bytes_moved=None), dict(CASES[1])]
    rows = _summary(ncu_report.render(ncu_report.pair(
        ncu_report.read_kernels(details_csv(KERNELS, scaled=False)), cases)))
    row = rows[(CASES[0]["group"], "fused")]
    assert row["minimum MB"] == "—" and row["ratio"] == "—"


def test_a_failed_call_is_shown_as_failed(ncu_report):
    cases = [dict(CASES[0]), dict(CASES[1], error="OutOfMemoryError: CUDA out of memory")]
    rows = _summary(ncu_report.render(ncu_report.pair(
        ncu_report.read_kernels(details_csv(KERNELS, scaled=False)), cases)))
    assert rows[(CASES[1]["group"], "eager")]["read MB"] == "call failed: OutOfMemoryError: CUDA out of memory"
    assert rows[(CASES[0]["group"], "fused")]["ratio"] == "1.00"


def test_mismatched_counts_are_an_error(ncu_report):
    kernels = ncu_report.read_kernels(details_csv(KERNELS, scaled=False))
    with pytest.raises(ncu_report.NcuReportError, match="2 marker kernels .* but 1 lines"):
        ncu_report.pair(kernels, [dict(CASES[0])])


def test_kernels_before_the_first_marker_are_an_error(ncu_report):
    kernels = ncu_report.read_kernels(details_csv(KERNELS[1:], scaled=False))
    with pytest.raises(ncu_report.NcuReportError, match="before any marker"):
        ncu_report.pair(kernels, [dict(CASES[0])])


@pytest.mark.parametrize("text, match", [
    ("==PROF== Connected\n==ERROR== something went wrong\n", "no CSV header"),
    ('"ID","Kernel Name","dram__bytes_read.sum"\n"0","k","1"\n', "no column for"),
    ('"ID","Kernel Name","Metric Name","Metric Unit","Metric Value"\n'
     '"0","k","dram__bytes_read.sum","byte","12"\n', "has no value for"),
    ('"ID","Kernel Name","Metric Name","Metric Unit","Metric Value"\n'
     '"0","k","dram__bytes_read.sum","furlong","12"\n', "unknown unit 'furlong'"),
    ('"ID","Kernel Name","Metric Name","Metric Unit","Metric Value"\n'
     '"0","k","dram__bytes_read.sum","byte","twelve"\n', "is not a number"),
])
def test_unreadable_csv_is_an_error(ncu_report, text, match):
    with pytest.raises(ncu_report.NcuReportError, match=match):
        ncu_report.read_kernels(text)


def test_case_log_lines_need_group_and_contender(ncu_report):
    with pytest.raises(ncu_report.NcuReportError, match="line 2: no 'contender'"):
        ncu_report.read_cases(json.dumps(CASES[0]) + "\n" + json.dumps({"group": "g"}) + "\n")
    with pytest.raises(ncu_report.NcuReportError, match="line 1: not JSON"):
        ncu_report.read_cases("{oops\n")


def test_command_line_writes_the_markdown(tmp_path):
    (tmp_path / "ncu.csv").write_text(details_csv(KERNELS, scaled=True))
    (tmp_path / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CASES))
    out = tmp_path / "ncu.md"
    proc = subprocess.run([sys.executable, str(BENCH_DIR / "ncu_report.py"), str(tmp_path / "ncu.csv"),
                           str(tmp_path / "cases.jsonl"), "-o", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(_summary(out.read_text())) == 2
    # a log from another run: a clear message and a non-zero exit, no markdown
    (tmp_path / "cases.jsonl").write_text(json.dumps(CASES[0]) + "\n")
    proc = subprocess.run([sys.executable, str(BENCH_DIR / "ncu_report.py"), str(tmp_path / "ncu.csv"),
                           str(tmp_path / "cases.jsonl")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "2 marker kernels" in proc.stderr and not proc.stdout


# ---------------------------------------------------------------------------------------------
# The profiled call (benchmarks/conftest.py)
# ---------------------------------------------------------------------------------------------

def test_profiled_call_order(monkeypatch, tmp_path):
    """Warm call outside the range; inside it the marker, then the call, then a synchronise."""
    import torch

    bconf = _load("fastdenoise_bench_conftest", BENCH_DIR / "conftest.py")
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    monkeypatch.setattr(torch.cuda.profiler, "start", lambda: events.append("start"))
    monkeypatch.setattr(torch.cuda.profiler, "stop", lambda: events.append("stop"))
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: events.append(f"marker {cycles}"))
    monkeypatch.setattr(bconf, "run_metadata", lambda device_type: {"gpu": "test GPU", "git_commit": "abc"})

    class Config:
        def getoption(self, name):
            return None

    b = bconf.Bench(benchmark=None, device=torch.device("cuda"), copy_bw={}, config=Config())
    log = tmp_path / "cases.jsonl"
    for contender in ("eager", "fused"):
        b.ncu_profiled_call(lambda: events.append("fn"), str(log), group="g 1x2", contender=contender,
                            bytes_moved=1234)
    one = ["fn", "sync", "start", f"marker {bconf.NCU_MARKER_CYCLES}", "fn", "sync", "stop"]
    assert events == one + one
    lines = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert [(r["group"], r["contender"], r["bytes_moved"]) for r in lines] == [("g 1x2", "eager", 1234),
                                                                              ("g 1x2", "fused", 1234)]
    assert lines[0]["meta"]["gpu"] == "test GPU"

    # A call that raises in the profiled range still closes it, and still writes its line (the
    # marker is in the profile), with the error; one that raises in the warm call writes none.
    def failing(at):
        def fn():
            events.append("fn")
            if events.count("fn") == at:
                raise RuntimeError("kernel failed")
        return fn

    events.clear()
    with pytest.raises(RuntimeError, match="kernel failed"):
        b.ncu_profiled_call(failing(2), str(log), group="g", contender="fused", bytes_moved=None)
    assert events[-1] == "stop"
    lines = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert len(lines) == 3 and lines[-1]["error"] == "RuntimeError: kernel failed"
    events.clear()
    with pytest.raises(RuntimeError, match="kernel failed"):
        b.ncu_profiled_call(failing(1), str(log), group="g", contender="fused", bytes_moved=None)
    assert "start" not in events and len(log.read_text().splitlines()) == 3


def test_ncu_log_without_cuda_is_a_usage_error(tmp_path):
    shutil.copy(BENCH_DIR / "conftest.py", tmp_path / "conftest.py")
    shutil.copy(BENCH_DIR / "pytest.ini", tmp_path / "pytest.ini")
    (tmp_path / "bench_tiny.py").write_text("def test_nothing(bench):\n    pass\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-m", "pytest", "bench_tiny.py", "-q", "-p", "no:cacheprovider",
                           "--bench-device", "cpu", "--bench-ncu-log", str(tmp_path / "c.jsonl")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "--bench-ncu-log" in proc.stderr and "run on cpu" in proc.stderr
