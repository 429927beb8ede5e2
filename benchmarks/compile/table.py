"""The README's `tempo-jax compile` table from the report JSONs in this folder.

    python benchmarks/compile/table.py benchmarks/compile/*.json

Each JSON is what `tempo-jax compile --out=F.json` wrote, named <recipe>.<topology>.<run>.json
(the commands are in the README next to the table). One row per compiled function: per-chip
total (peak + resident) against HBM, and the compiler's own verdict when it refused the program.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

GIB = 2**30


def _total(f: dict) -> str:
    if f["status"] == "oom":  # the compiler's message carries what it needed
        needed = re.search(r"temporaries \(([\d.]+)G\)", f["message"])
        return f"compiler OOM ({needed.group(1)} GiB temporaries)" if needed else "compiler OOM"
    if f["status"] == "error":
        return f"error: {f['message'][:80]}"
    return f"{f['total_bytes'] / GIB:.1f} GiB ({100 * f['hbm_fraction']:.0f}%)"


def rows(path: pathlib.Path) -> list[str]:
    report = json.loads(path.read_text())
    recipe = pathlib.Path(report["config"]).stem
    run = path.stem.split(".")[-1]  # <recipe>.<topology>.<run>.json
    chip = f"{report['topology']} ({report['chips']} x {report['chip']['hbm_bytes'] / GIB:.0f} GiB)"
    out = []
    for f in report["functions"]:
        out.append(
            f"| {recipe} | {chip} | {run} | {f['name']} | {f['shape']} | {_total(f)} "
            f"| {f['temp_bytes'] / GIB:.1f} | {f['kv_cache_bytes'] / GIB:.1f} "
            f"| {f['roofline_s']:.3g} | {f['compile_s']:.0f} |"
        )
    return out


def main(paths: list[str]) -> None:
    print(
        "| recipe | topology | run | function | shape | per-chip total / HBM | temp GiB | KV GiB "
        "| roofline s | compile s |"
    )
    print("|" + "---|" * 10)
    for path in paths:
        print("\n".join(rows(pathlib.Path(path))))


if __name__ == "__main__":
    main(sys.argv[1:])
