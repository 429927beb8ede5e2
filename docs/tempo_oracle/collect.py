"""Writes docs/tempo_oracle/runs.json from the study's workdirs: each run's step-0 and final D_U
numbers, the measured reward AUROC (tempo_oracle controls), the critic's within-question AUROC at
step 0, and its CPU seconds (the queue's log, runs/ctl/queue.jsonl).

    python docs/tempo_oracle/collect.py runs/ctl docs/tempo_oracle/runs.json
"""

import glob
import json
import math
import os
import sys

KEYS = ("mean@8", "maj@8", "pass@8", "answer_entropy", "critic/auroc_within_question")


def main(root: str, out: str) -> None:
    cpu = {}
    for line in open(os.path.join(root, "queue.jsonl")):
        rec = json.loads(line)
        cpu[rec["name"]] = rec["cpu_s"]
    runs = {}
    for path in sorted(glob.glob(os.path.join(root, "*", "*", "metrics.jsonl"))):
        group, name = path.split(os.sep)[-3:-1]
        records = [json.loads(x) for x in open(path)]
        evals = [r for r in records if "eval/unlabeled/mean@8" in r]
        if len(evals) < 2:
            continue
        aurocs = [
            v
            for r in records
            for k, v in r.items()
            if k.endswith("/reward_auroc_within_question") and not math.isnan(v)
        ]
        key = (
            name
            if group in ("oracle", "ref")
            else f"{name.rsplit('-s', 1)[0]}-{group}-s{name.rsplit('-s', 1)[1]}"
        )
        runs[key] = {
            f"step{e['step']}": {
                k: round(e[f"eval/unlabeled/{k}"], 4) for k in KEYS if f"eval/unlabeled/{k}" in e
            }
            for e in (evals[0], evals[-1])
        }
        if aurocs:
            runs[key]["reward_auroc_within_question"] = round(sum(aurocs) / len(aurocs), 4)
        runs[key]["cpu_s"] = cpu.get(f"{group}/{name}")
    payload = {"split": "unlabeled (D_U, 32 questions x 8 samples)", "runs": runs}
    with open(out, "w") as f:
        json.dump(payload, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
