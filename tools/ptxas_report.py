"""Turns nvcc's -Xptxas=-v output (a build log) into the markdown table of docs/cuda_resources.md.

    cmake --build build/all -j2 2>&1 | tee build.log      # default arch list
    python tools/ptxas_report.py build.log                # prints the table

One row per kernel and architecture: registers, spill stores/loads, stack frame, static
shared memory (dynamic shared memory is set at launch and noted in the doc), barriers.
"""

from __future__ import annotations

import re
import subprocess
import sys

ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+)'")
PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?"
                  r"(?:, (\d+) bytes cumulative stack size)?"
                  r"(?:, (\d+) bytes smem)?")


def demangle(names: list[str]) -> dict[str, str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                             check=True)
        return dict(zip(names, out.stdout.splitlines(), strict=True))
    except (OSError, subprocess.CalledProcessError, ValueError):
        return {n: n for n in names}


def short(name: str) -> str:
    """'void mbpo_fast::(anonymous namespace)::step_mlp_kernel(...)' -> 'step_mlp_kernel'."""
    name = name.replace("(anonymous namespace)::", "")
    if name.startswith("void "):
        name = name[5:]
    flat, depth = [], 0  # drop template arguments: cub::DeviceScanKernel<...> -> DeviceScanKernel
    for ch in name:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            flat.append(ch)
    return "".join(flat).split("(")[0].split("::")[-1]


def parse(text: str) -> list[dict]:
    rows, cur = [], None
    for line in text.splitlines():
        if m := ENTRY.search(line):
            cur = {"kernel": m.group(1), "arch": m.group(2)}
        elif cur is not None and (m := PROPS.search(line)):
            cur.update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
        elif cur is not None and (m := USED.search(line)):
            cur.update(regs=int(m.group(1)), barriers=int(m.group(2) or 0),
                       smem=int(m.group(4) or 0))
            rows.append(cur)
            cur = None
    seen, unique = set(), []
    for r in rows:  # a kernel compiled twice (two targets) appears twice
        key = (r["kernel"], r["arch"])
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique


def main(path: str) -> int:
    rows = parse(open(path, encoding="utf-8", errors="replace").read())
    names = demangle(sorted({r["kernel"] for r in rows}))
    print("| kernel | arch | registers | spill stores / loads (B) | stack frame (B) "
          "| static smem (B) | barriers |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (short(names[r["kernel"]]), r["arch"])):
        print(f"| `{short(names[r['kernel']])}` | {r['arch']} | {r['regs']} | "
              f"{r['spill_st']} / {r['spill_ld']} "
              f"| {r['stack']} | {r['smem']} | {r['barriers']} |")
    spills = [r for r in rows if r["spill_st"] or r["spill_ld"]]
    print(f"\n{len(rows)} kernel/arch pairs, {len(spills)} with spills.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
