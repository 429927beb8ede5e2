"""The controls of README "Controls: is it the loop or the critic?" on the micro learning setting
of tests/tempo/test_learning.py (a 64-wide 2-layer policy after 70 SFT steps; D_U = 4 fixed
questions that are also the evaluated set; D_L = the other 12 questions of the 16, so the critic
never sees D_U's answers; 4 prompts x 16 samples a step, 24 steps, lr 3e-4).

Runs each variant (method + config changes) per seed in this process, one after the other, each
from the seed's shared SFT, and appends one JSON line per run to OUT/runs.jsonl: step-0 and final
D_U mean@16 / pass@16, the measured reward AUROC within a question (tempo_oracle controls), the
critic's within-question AUROC at step 0, and the run's CPU seconds (this process and its grading
workers). A rerun skips the runs already in runs.jsonl.

    python benchmarks/controls_micro.py --out=docs/tempo_oracle/micro --seeds=0 \\
        --variants=tempo_oracle-p0,tempo_mixed_oracle-p0,oracle,ttrl,tempo
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import resource
import shutil
import statistics
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "tempo"))
sys.path.insert(0, str(ROOT))

from test_learning import SFT_STEPS, _questions, _train, learning_config  # noqa: E402

from tempo_jax.tempo.build import build_run  # noqa: E402
from tempo_jax.train.metric_writers import read_jsonl  # noqa: E402
from tempo_jax.train.sft import run_sft  # noqa: E402

SETTING = {
    "total_steps": 24,
    "eval_every": 24,
    "data.prompts_per_step": 4,
    "rollout.n": 16,
    "eval.n": 16,
    "eval.ks": (1, 16),
    "tempo.critic_warmup_steps": 4,
    "tempo.critic_updates": 2,
    "train.policy_optimizer.learning_rate": 3e-4,
    "train.critic_optimizer.learning_rate": 1e-3,
}
FLIPS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def variants() -> dict[str, tuple[str, dict]]:
    """name -> (method, config changes beyond SETTING)."""
    out = {}
    for method in ("tempo_oracle", "tempo_mixed_oracle"):
        for p in FLIPS:
            out[f"{method}-p{p:g}"] = (method, {"tempo.oracle_flip_prob": p})
    for method in ("oracle", "ttrl", "tempo", "tempo_mixed"):
        out[method] = (method, {})
    for scope in ("with_labeled", "question"):
        out[f"tempo-whiten_{scope}"] = ("tempo", {"tempo.whiten_scope": scope})
        out[f"tempo_oracle-p0.3-whiten_{scope}"] = (
            "tempo_oracle",
            {"tempo.whiten_scope": scope, "tempo.oracle_flip_prob": 0.3},
        )
    out["tempo-estep_filter"] = ("tempo", {"tempo.estep_group_filter": True})
    out["tempo-em_outcome"] = ("tempo", {"tempo.advantage": "em_outcome"})
    return out


def write_files(root: pathlib.Path) -> dict[str, str]:
    """D_L (questions 4-15), D_U and its eval copy (questions 0-3) as JSONL files."""
    problems = _questions()
    out = {}
    for name, part in (("rest", problems[4:]), ("four", problems[:4])):
        for split in ("labeled", "unlabeled", "eval"):
            path = root / f"{name}_{split}.jsonl"
            with path.open("w") as f:
                for p in part:
                    row = {"question": p.question, "answer": p.answer, "solution": p.solution}
                    f.write(json.dumps(row) + "\n")
            out[f"{name}_{split}"] = str(path)
    return out


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def config_for(data_dir: str, files, method: str, seed: int, changes: dict):
    return learning_config(
        data_dir, method, files, "rest", "four", "four", seed=seed, **SETTING, **changes
    )


def sft(files, work: pathlib.Path, seed: int) -> pathlib.Path:
    """The seed's SFT policy directory (made once)."""
    workdir = work / f"sft-s{seed}"
    if not (workdir / "sft" / str(SFT_STEPS)).exists():
        config = config_for(str(work / "data"), files, "ttrl", seed, {})
        run, policy = build_run(config, str(workdir))
        try:
            run_sft(run, policy, str(workdir / "sft"))
        finally:
            run.pool.close()
    return workdir / "sft"


def summarize(name: str, seed: int, records: list[dict], cpu: float) -> dict:
    first, last = records[0], records[-1]
    aurocs = [
        v
        for r in records[1:]
        for k, v in r.items()
        if k.endswith("/reward_auroc_within_question") and not math.isnan(v)
    ]
    return {
        "name": name,
        "seed": seed,
        "steps": last["step"],
        "mean@16": [first["eval/fixed/mean@16"], last["eval/fixed/mean@16"]],
        "pass@16": [first["eval/fixed/pass@16"], last["eval/fixed/pass@16"]],
        "delta_mean": last["eval/fixed/mean@16"] - first["eval/fixed/mean@16"],
        "delta_pass": last["eval/fixed/pass@16"] - first["eval/fixed/pass@16"],
        "reward_auroc_within_question": statistics.fmean(aurocs) if aurocs else None,
        "critic_auroc_within_question_step0": first.get("eval/fixed/critic/auroc_within_question"),
        "critic_auroc_step0": first.get("eval/fixed/critic/auroc"),
        "cpu_s": round(cpu, 1),
    }


def report(out: str, references: tuple[str, ...] = ("ttrl", "oracle")) -> str:
    """OUT/curve.{md,png} from OUT/runs.jsonl: the tempo_oracle controls' Δ against the measured
    reward AUROC (`tempo_jax.experiments.oracle_curve`), the references and every other variant."""
    from tempo_jax.experiments import oracle_curve

    rows = read_jsonl(os.path.join(out, "runs.jsonl"))
    points = []
    for r in rows:
        method, _, p = r["name"].partition("-p")
        if r["reward_auroc_within_question"] is not None and p.replace(".", "").isdigit():
            points.append({**r, "method": method, "p": float(p)})
    refs = {}
    for name in sorted({r["name"] for r in rows} - {r["name"] for r in points}):
        mine = [r for r in rows if r["name"] == name]
        ref = {"n": float(len(mine))}
        for key in ("delta_mean", "delta_pass"):
            ref[key], ref[f"{key}_se"] = oracle_curve.mean_se([r[key] for r in mine])
        refs[name] = ref
    table = oracle_curve.curves(points)
    text = oracle_curve.markdown(table, refs)
    with open(os.path.join(out, "curve.md"), "w") as f:
        f.write(text)
    oracle_curve.plot(
        table, {k: v for k, v in refs.items() if k in references}, os.path.join(out, "curve.png")
    )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", default=",".join(variants()))
    parser.add_argument("--work", default="", help="scratch directory (default: a temp dir)")
    parser.add_argument("--report_only", action="store_true", help="only write OUT/curve.*")
    args = parser.parse_args(argv)
    if args.report_only:
        print(report(args.out), end="")
        return 0
    table = variants()
    wanted = [v for v in args.variants.split(",") if v]
    unknown = [v for v in wanted if v not in table]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {sorted(table)}")
    os.makedirs(args.out, exist_ok=True)
    results = os.path.join(args.out, "runs.jsonl")
    done = set()
    if os.path.exists(results):
        done = {(r["name"], r["seed"]) for r in read_jsonl(results)}
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="controls_micro_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    files = write_files(work)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in wanted:
            if (name, seed) in done:
                continue
            sft_dir = sft(files, work, seed)
            method, changes = table[name]
            workdir = work / f"{name}-s{seed}"
            shutil.rmtree(workdir, ignore_errors=True)
            config = config_for(str(work / "data"), files, method, seed, changes)
            start = cpu_seconds()
            records = _train(config, workdir, sft_dir)  # the learning tests' run from the SFT
            row = summarize(name, seed, records, cpu_seconds() - start)
            with open(results, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
