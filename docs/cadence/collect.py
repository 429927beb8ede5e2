"""Writes docs/cadence/runs.json from the cadence study's sweep roots and logs: each run's step-0
and final D_U numbers, the critic's within-question AUROC at step 0 and at the end, and the
wall and CPU seconds `launch/sweep.py` printed for it (its stdout, one log per sweep command).

    python docs/cadence/collect.py docs/cadence/runs.json \\
        tiny_repro=runs/r5=runs/r5.log shifted=runs/s5=runs/rest.log

Each argument after the output is NAME=ROOT=LOG[,LOG...]; a run's times come from the log line
that reports it (`[i/N] <run>: ok in <wall>s (CPU <cpu>s)`) with the most CPU: a later sweep
over the same root restores a finished run (or SFT) in a few seconds and reports that too.
"""

import json
import os
import re
import sys

KEYS = ("mean@8", "maj@8", "pass@8", "answer_entropy", "critic/auroc_within_question")
_DONE = re.compile(r"^\[\d+/\d+\] (?P<name>\S+): ok in (?P<wall>\d+)s \(CPU (?P<cpu>\d+)s\)")


def times(logs):
    out = {}
    for log in logs:
        for line in open(log):
            m = _DONE.match(line)
            if m and int(m["cpu"]) > out.get(m["name"], {}).get("cpu_s", -1):
                out[m["name"]] = {"wall_s": int(m["wall"]), "cpu_s": int(m["cpu"])}
    return out


def distribution(root, logs):
    spent = times(logs)
    runs = {}
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name, "metrics.jsonl")
        if name.startswith("sft-") or not os.path.exists(path):
            continue
        evals = [r for r in map(json.loads, open(path)) if "eval/unlabeled/mean@8" in r]
        if len(evals) < 2 or evals[0]["step"] != 0:
            continue
        runs[name] = {
            f"step{e['step']}": {
                k: round(e[f"eval/unlabeled/{k}"], 4) for k in KEYS if f"eval/unlabeled/{k}" in e
            }
            for e in (evals[0], evals[-1])
        }
        runs[name].update(spent.get(name, {}))
    sfts = {k: v for k, v in spent.items() if k.startswith("sft-")}
    cpu = sum(v.get("cpu_s", 0) for v in runs.values()) + sum(v["cpu_s"] for v in sfts.values())
    return {"runs": runs, "sft": sfts, "total_cpu_s": cpu}


def main(out, *specs):
    payload = {"split": "unlabeled (D_U, 32 questions x 8 samples)"}
    for spec in specs:
        name, root, logs = spec.split("=", 2)
        payload[name] = distribution(root, logs.split(","))
    with open(out, "w") as f:
        json.dump(payload, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
