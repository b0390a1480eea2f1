"""``python -m fastdenoise.info``: versions, what was compiled (for which archs), and the GPU."""

from __future__ import annotations

import importlib
import platform
import sys


def collect() -> dict:
    import torch

    from . import __version__, _dispatch, _ext

    info = {
        "fastdenoise": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": None,
        "triton_interpret": _dispatch.triton_interpret(),
        "extension": _ext.build_info(),
        "gpus": [],
    }
    if _dispatch.triton_available():
        try:
            info["triton"] = importlib.import_module("triton").__version__
        except Exception as exc:  # an installed but broken triton is worth reporting
            info["triton"] = f"import failed: {exc}"
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                                 "memory_gib": round(p.total_memory / 2**30, 1),
                                 "sms": p.multi_processor_count})
    return info


def format_info(info: dict) -> str:
    ext = info["extension"]
    lines = [
        f"fastdenoise      {info['fastdenoise']}",
        f"python           {info['python']} ({info['platform']})",
        f"torch            {info['torch']} (CUDA {info['torch_cuda'] or 'none: CPU build'})",
        f"triton           {info['triton'] or 'not installed'}"
        + ("  [TRITON_INTERPRET=1: kernels run on CPU]" if info["triton_interpret"] else ""),
    ]
    if ext["loaded"]:
        lines += [
            f"extension _C     loaded: built for torch {ext['torch_version']} by {ext['build_system']} "
            f"({ext['compiler']}, OpenMP {'on' if ext.get('openmp') else 'off'})",
            "  CUDA kernels   " + (f"yes, CUDA {ext['cuda_version']}, archs {' '.join(ext['cuda_archs']) or '?'}"
                                    if ext["cuda"] else f"no ({ext.get('cuda_skipped') or 'CPU-only build'})"),
            "  ops            " + (", ".join(f"{k.split('::')[1]} [{'/'.join(v)}]" for k, v in ext["ops"].items())
                                   or "none"),
        ]
    else:
        lines.append(f"extension _C     NOT loaded: {ext['error']}")
    if info["gpus"]:
        for g in info["gpus"]:
            lines.append(f"GPU {g['index']}            {g['name']} (sm_{g['capability'].replace('.', '')}, "
                         f"{g['memory_gib']} GiB, {g['sms']} SMs)")
    else:
        lines.append("GPU              none visible to torch")
    return "\n".join(lines)


def main() -> int:
    print(format_info(collect()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
