"""Compiles every Triton kernel of fastdenoise for a GPU that is not there (default sm_90: the
H100 / H200), with exactly the arguments its launcher passes, and reports what ptxas made of it.

    python scripts/triton_aot_check.py [--arch 90 80 ...] [--markdown FILE]

The Triton interpreter (``TRITON_INTERPRET=1``, what CI runs the kernels under) checks their
arithmetic but compiles nothing: a kernel it accepts may still fail to compile for a GPU (a dot
below the minimum tile, a type the backend rejects, a loop-carried value changing type), or
compile into one that spills. Here the public ops are called on small CPU tensors with
``backend="triton"``; ``JITFunction.run`` is swapped for a function that binds the arguments the
way a launch does (the same specialisation: dtypes, alignment, integers equal to 1) and compiles
through Triton's own pipeline to PTX and a cubin for the target; the registers, spills and stack
come from that ptxas run's ``-v`` report (``TRITON_DUMP_PTXAS_LOG``; caching off). Nothing is
launched (the ops' outputs are garbage and unused).

Fails (exit 1) when a kernel does not compile, or when a ``*_kernel`` of ``fastdenoise.triton``
was never compiled (a launcher this script does not reach). Spills are reported, not failed on:
they are a performance matter for the GPU session to judge. Needs triton with its NVIDIA backend
(it brings ptxas); no GPU, no CUDA driver.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import pkgutil
import re
import subprocess
import sys
import time
import traceback

os.environ.pop("TRITON_INTERPRET", None)     # the kernels must be JITFunctions, not interpreted
os.environ["TRITON_ALWAYS_COMPILE"] = "1"    # no cache: each compile runs ptxas,
os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"    # whose -v report Triton prints

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import jit as triton_jit  # noqa: E402

import fastdenoise.triton as fd_triton  # noqa: E402

MODULES = [importlib.import_module(f"fastdenoise.triton.{m.name}") for m in pkgutil.iter_modules(fd_triton.__path__)]
# From here the dispatch must let CPU tensors take the Triton backend (it asks for the
# interpreter); the kernels were created above as JITFunctions and stay so.
os.environ["TRITON_INTERPRET"] = "1"

from fastdenoise import ops  # noqa: E402

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
RECORDS: list = []
FAILURES: list = []


def _ptxas(arch: int) -> str:
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(arch).path
    except Exception:                         # older layouts of the backend
        return knobs.nvidia.ptxas.path


def _resources(log: str) -> dict:
    """Registers, spill stores / loads and stack bytes from a ptxas -v log."""
    def num(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else 0

    if "Used" not in log:
        raise RuntimeError(f"no ptxas -v report in Triton's log: {log.strip()[-300:]!r}")
    return {"regs": num(r"Used (\d+) registers"), "spill_st": num(r"(\d+) bytes spill stores"),
            "spill_ld": num(r"(\d+) bytes spill loads"), "stack": num(r"(\d+) bytes stack frame")}


def make_aot_run(arch: int, label_of):
    target = GPUTarget("cuda", arch, 32)

    missing = [n for n in ("create_function_from_signature",) if not hasattr(triton_jit, n)]
    missing += [f"JITFunction.{n}" for n in ("_pack_args",) if not hasattr(triton_jit.JITFunction, n)]
    if missing:
        raise SystemExit(f"triton {triton.__version__}: no triton.runtime.jit {missing}; this script follows the "
                         "launch path of triton 3.9 (JITFunction.run) and needs updating for this version")

    def aot_run(self, *args, grid, warmup, **kwargs):
        from triton.compiler import ASTSource, compile, make_backend
        kwargs["debug"] = kwargs.get("debug", self.debug) or knobs.runtime.debug
        backend = make_backend(target)
        binder = triton_jit.create_function_from_signature(self.signature, self.params, backend)
        bound_args, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound_args, specialization, options)
        consts = {k: v for (k, v), p in zip(bound_args.items(), self.params) if p.is_constexpr}
        dtypes = sorted({str(v.dtype).replace("torch.", "") for v in bound_args.values()
                         if isinstance(v, torch.Tensor)})
        rec = {"arch": arch, "kernel": self.__name__, "case": label_of(), "dtypes": "/".join(dtypes),
               "constexprs": consts,
               "num_warps": options.num_warps, "num_stages": options.num_stages}
        t0 = time.perf_counter()
        try:
            # Triton's own ptxas run (its flags: e.g. --regAllocOptLevel=2 in 3.9), its -v log
            # printed: compiled afresh every time (a cached kernel would print nothing)
            log = io.StringIO()
            with contextlib.redirect_stdout(log):
                kernel = compile(ASTSource(self, signature, constexprs, attrs), target=target,
                                 options=options.__dict__)
            rec.update(_resources(log.getvalue()))
            rec["shared"] = int(kernel.metadata.shared)
        except Exception as e:                # recorded; the run goes on to the other kernels
            rec["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
            FAILURES.append(rec)
        rec["compile_s"] = time.perf_counter() - t0
        RECORDS.append(rec)
        return None

    return aot_run


def _t(shape, dtype, layout="nchw", scale=1.0):
    x = torch.randn(shape) * scale
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def cases():
    """(label, thunk) pairs: each thunk calls public ops (and, for the 64-bit offsets, the
    launchers' ``force_int64``) so that every kernel meets the constexpr combinations its
    launchers choose: every dtype and layout, the variants and flags of each op."""
    from fastdenoise.triton import dwconv_gate as t_dwg
    from fastdenoise.triton import pwdw as t_pwdw
    out = []
    for dtype in DTYPES:
        for layout in ("nchw", "channels_last"):
            tag = f"{str(dtype).replace('torch.', '')} {layout}"
            x = _t((2, 8, 12, 18), dtype, layout)
            out.append((f"haar_dwt2d {tag}", lambda x=x: ops.haar_dwt2d(x, backend="triton")))
            y = _t((2, 32, 6, 9), dtype, layout)
            out.append((f"haar_idwt2d {tag}", lambda y=y: ops.haar_idwt2d(y, backend="triton")))
            c = 16
            xc = _t((2, c, 9, 11), dtype, layout)
            w1, b1, w2, b2 = (_t(s, dtype) for s in ((4, c), (4,), (c, 4), (c,)))
            out.append((f"channel_attention {tag}",
                        lambda xc=xc, w1=w1, b1=b1, w2=w2, b2=b2: ops.channel_attention(
                            xc, w1, b1, w2, b2, backend="triton")))
            out.append((f"simplified_channel_attention gate {tag}",
                        lambda xc=xc, w=_t((c // 2, c // 2), dtype), b=_t((c // 2,), dtype):
                        ops.simplified_channel_attention(xc, w, b, gate=True, backend="triton")))
            out.append((f"simple_gate / gelu_gate {tag}",
                        lambda xc=xc: (ops.simple_gate(xc, backend="triton"), ops.gelu_gate(xc, backend="triton"))))
            wn, bn = _t((c,), dtype), _t((c,), dtype)
            out.append((f"layer_norm2d {tag}",
                        lambda xc=xc, wn=wn, bn=bn: (ops.layer_norm2d(xc, wn, bn, backend="triton"),
                                                     ops.layer_norm2d(xc, wn, None, 1e-5, bias_free=True,
                                                                      backend="triton"))))
            # (every tensor is made here, not in the lambdas: a lambda would see the loop's last dtype)
            for c, heads in ((48, 1), (192, 2)):          # d = 48 and 96: the official configs' head widths
                qkv, temp = _t((2, 3 * c, 10, 12), dtype, layout), torch.ones(heads, 1, 1, dtype=dtype)
                out.append((f"transposed_attention d={c // heads} {tag}",
                            lambda qkv=qkv, temp=temp, heads=heads: ops.transposed_attention(
                                qkv, temp, heads, backend="triton")))
            xg, wg = _t((2, 2 * 127, 9, 13), dtype, layout), _t((254, 1, 3, 3), dtype)
            out.append((f"dwconv_gate {tag}", lambda xg=xg, wg=wg: ops.dwconv_gate(xg, wg, None, backend="triton")))
            xp = _t((2, 48, 20, 40), dtype, layout)
            for cmid, gate in ((144, False), (254, True)):
                params = (_t((cmid, 48, 1, 1), dtype), _t((cmid, 1, 3, 3), dtype), _t((cmid,), dtype),
                          _t((cmid,), dtype))
                out.append((f"pointwise_dwconv {cmid}{' gate' if gate else ''} {tag}",
                            lambda xp=xp, params=params, gate=gate: ops.pointwise_dwconv(
                                xp, *params, gate=gate, backend="triton")))
    # A 1080p feature map (the launchers pick their tiles from the size: the small maps above
    # do not reach the tiles a real image gets). Uninitialised: nothing is launched.
    def big(shape, layout="nchw"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        return torch.empty(shape, dtype=torch.float16, memory_format=fmt)

    hd = (1080, 1920)
    for layout in ("nchw", "channels_last"):
        x48 = big((1, 48, *hd), layout)
        w48 = big((48,))
        out.append((f"haar_dwt2d 1080p {layout}", lambda x=x48: ops.haar_dwt2d(x, backend="triton")))
        out.append((f"layer_norm2d 1080p {layout}", lambda x=x48, w=w48: ops.layer_norm2d(x, w, w, backend="triton")))
        out.append((f"pointwise_dwconv 48 -> 144 / 254 gate 1080p {layout}", lambda x=x48: (
            ops.pointwise_dwconv(x, big((144, 48, 1, 1)), big((144, 1, 3, 3)), backend="triton"),
            ops.pointwise_dwconv(x, big((254, 48, 1, 1)), big((254, 1, 3, 3)), gate=True, backend="triton"))))
        x64 = big((1, 64, *hd), layout)
        out.append((f"channel_attention C=64 1080p {layout}", lambda x=x64: ops.channel_attention(
            x, big((16, 64)), big((16,)), big((64, 16)), big((64,)), backend="triton")))
        out.append((f"dwconv_gate 254 1080p {layout}", lambda x=big((1, 254, *hd), layout): ops.dwconv_gate(
            x, big((254, 1, 3, 3)), None, backend="triton")))
    from fastdenoise.triton import mdta as t_mdta             # the Gram pass alone (the rest is torch)
    out.append(("mdta Gram pass d=48 1080p", lambda: t_mdta._gram(big((1, 144, *hd)), 1)))
    # the other flavours, once each (float16, NCHW)
    h = torch.float16
    xc = _t((2, 16, 9, 11), h)
    w1, b1, w2, b2 = (_t(s, h) for s in ((4, 16), (4,), (16, 4), (16,)))
    for variant in ("invdn", "mwcnn"):
        out.append((f"haar {variant}", lambda v=variant: (ops.haar_dwt2d(_t((1, 4, 8, 8), h), v, backend="triton"),
                                                          ops.haar_idwt2d(_t((1, 16, 4, 4), h), v, backend="triton"))))
    for act in ("relu", "gelu"):
        out.append((f"channel_attention act={act} + residual",
                    lambda act=act: ops.channel_attention(xc, w1, b1, w2, b2, residual=_t(xc.shape, h), act=act,
                                                          backend="triton")))
    out.append(("simplified_channel_attention", lambda: ops.simplified_channel_attention(
        xc, _t((16, 16), h), _t((16,), h), backend="triton")))
    out.append(("dwconv_gate int64 offsets", lambda: t_dwg._dwconv_gate(
        _t((1, 8, 5, 7), h), _t((8, 1, 3, 3), h), _t((8,), h), force_int64=True)))
    out.append(("pointwise_dwconv int64 offsets", lambda: t_pwdw._pointwise_dwconv(
        _t((1, 48, 5, 7), h), _t((254, 48, 1, 1), h), _t((254, 1, 3, 3), h), None, None, True, force_int64=True)))
    out.append(("pointwise_dwconv Cin 20 (masked slice), narrow image", lambda: ops.pointwise_dwconv(
        _t((1, 20, 3, 5), h), _t((36, 20), h), _t((36, 1, 3, 3), h), gate=True, backend="triton")))
    for dtype in (torch.float16, torch.float32):        # the models' widest feature maps
        tag = str(dtype).replace("torch.", "")
        for c, layout in ((384, "nchw"), (384, "channels_last"), (64, "nchw")):
            x, wn = _t((1, c, 6, 10), dtype, layout), _t((c,), dtype)
            out.append((f"layer_norm2d C={c} {tag} {layout}", lambda x=x, wn=wn: (
                ops.layer_norm2d(x, wn, wn, backend="triton"),
                ops.layer_norm2d(x, wn, None, 1e-5, bias_free=True, backend="triton"))))
        for c in (64, 128):                                # NAFNet / RIDNet widths
            x = _t((1, c, 6, 10), dtype)
            params = (_t((c // 4, c), dtype), _t((c // 4,), dtype), _t((c, c // 4), dtype), _t((c,), dtype))
            out.append((f"channel_attention C={c} {tag}", lambda x=x, params=params: ops.channel_attention(
                x, *params, residual=x, act="gelu", backend="triton")))
        for layout in ("nchw", "channels_last"):          # the GDFN's widest: 2 x 1021 channels
            x, wg = _t((1, 2042, 6, 10), dtype, layout), _t((2042, 1, 3, 3), dtype)
            out.append((f"dwconv_gate 2042 {tag} {layout}", lambda x=x, wg=wg: ops.dwconv_gate(
                x, wg, wg[:, 0, 0, 0], backend="triton")))
    for dtype in (torch.float16, torch.float32):        # Restormer's widest level (dim 384)
        for cmid, gate in ((1152, False), (2042, True)):
            params = (_t((cmid, 384, 1, 1), dtype), _t((cmid, 1, 3, 3), dtype))
            out.append((f"pointwise_dwconv 384 -> {cmid}{' gate' if gate else ''} "
                        f"{str(dtype).replace('torch.', '')}",
                        lambda x=_t((1, 384, 6, 10), dtype), params=params, gate=gate: ops.pointwise_dwconv(
                            x, *params, gate=gate, backend="triton")))
    return out


def _kernels() -> set:
    names = set()
    for m in MODULES:
        for name, obj in vars(m).items():
            if isinstance(obj, triton_jit.JITFunction) and name.endswith("_kernel"):
                names.add(obj.__name__)
    return names


def _markdown(arches, seconds: float) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    names = ", ".join(f"sm_{a}" for a in arches)
    lines = [f"# Triton kernels compiled for {names} (no GPU: the ptxas -v report of each build)", "",
             f"{time.strftime('%Y-%m-%d')}, commit {commit}: triton {triton.__version__}, torch {torch.__version__}, "
             f"ptxas `{os.path.basename(_ptxas(arches[0]))}`; {len(RECORDS)} compilations in {seconds:.0f} s by "
             "`scripts/triton_aot_check.py`. Registers, spills, stack and shared memory per thread block "
             "are ptxas's; nothing here was run or timed.", ""]
    for arch in arches:
        lines += [f"## sm_{arch}", "",
                  "| kernel | case | dtypes | regs | spill st / ld (B) | stack (B) | shared (B) | warps | constexprs |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in RECORDS:
            if r["arch"] != arch:
                continue
            consts = ", ".join(f"{k}={v}" for k, v in r["constexprs"].items())
            if "error" in r:
                lines.append(f"| {r['kernel']} | {r['case']} | {r['dtypes']} | FAILED: {r['error']} | | | | "
                             f"{r['num_warps']} | {consts} |")
                continue
            lines.append(f"| {r['kernel']} | {r['case']} | {r['dtypes']} | {r['regs']} | {r['spill_st']} / "
                         f"{r['spill_ld']} | {r['stack']} | {r['shared']} | {r['num_warps']} | {consts} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[90],
                    help="compute capabilities x10 (default 90: H100 / H200; 80: A100, 89: L4 / RTX 40, ...)")
    ap.add_argument("--markdown", help="write the table to this file")
    args = ap.parse_args(argv)

    current = ["?"]
    t0 = time.perf_counter()
    for arch in args.arch:
        triton_jit.JITFunction.run = make_aot_run(arch, lambda: current[0])
        for label, thunk in cases():
            current[0] = label
            try:
                thunk()
            except Exception:                 # a launcher broke before its kernel: report, go on
                FAILURES.append({"kernel": "?", "case": f"sm_{arch} {label}", "error": traceback.format_exc(limit=3)})
    seconds = time.perf_counter() - t0
    table = _markdown(args.arch, seconds)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    missing = _kernels() - {r["kernel"] for r in RECORDS}
    spilling = sorted({f"{r['kernel']} (sm_{r['arch']})" for r in RECORDS if r.get("spill_st") or r.get("spill_ld")})
    if spilling:
        print(f"note: spills in {', '.join(spilling)} (see the table)")
    if FAILURES or missing:
        for f in FAILURES:
            print(f"FAILED: {f['kernel']} [{f['case']}]: {f['error']}", file=sys.stderr)
        if missing:
            print(f"FAILED: never compiled (no case reaches them): {sorted(missing)}", file=sys.stderr)
        return 1
    print(f"ok: {len(RECORDS)} compilations of {len(_kernels())} kernels for "
          f"{', '.join(f'sm_{a}' for a in args.arch)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
