"""Checks that two builds of fastdenoise._C register the same ops with the same backends.

    python scripts/check_op_names.py path/to/setup_build/_C*.so path/to/cmake_build/_C*.so

Each library is loaded in a fresh process (torch.ops.load_library), and the dispatcher is
asked which ``fastdenoise::`` schemas exist and which dispatch keys have kernels.
"""

import json
import subprocess
import sys

PROBE = r"""
import json, sys, torch
torch.ops.load_library(sys.argv[1])
ops = {}
for s in torch._C._jit_get_all_schemas():
    if s.name.startswith("fastdenoise::"):
        ops[str(s)] = [k for k in ("CPU", "CUDA") if torch._C._dispatch_has_kernel_for_dispatch_key(s.name, k)]
print(json.dumps(ops, sort_keys=True))
"""


def ops_of(path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, path], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    a, b = ops_of(argv[0]), ops_of(argv[1])
    for name, ops in ((argv[0], a), (argv[1], b)):
        print(f"{name}:")
        for op, keys in ops.items():
            print(f"  {op}  [{', '.join(keys)}]")
    if not a:
        print("no fastdenoise ops registered by the first library")
        return 1
    if a != b:
        only_a, only_b = set(a) - set(b), set(b) - set(a)
        print(f"MISMATCH: only in first: {sorted(only_a)}; only in second: {sorted(only_b)}; "
              f"different backends: {sorted(k for k in set(a) & set(b) if a[k] != b[k])}")
        return 1
    print(f"same {len(a)} ops in both builds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
