"""RL-like rollouts (EOS at long-tailed lengths): the paged Engine vs the static Sampler vs HF.

A random Qwen3-shaped model (the `sampler_vs_hf.py` shape: 4 layers, hidden 256, vocab 32k, but
weights drawn with std 0.2 as in the sampling tests: with the default 0.02 a greedy trajectory
falls into a cycle of one or two tokens within a few steps, so EOS comes at once or never) whose
EOS row of the (tied) output embedding is replaced by alpha * u, u the unit mean direction of
the final hidden states: the EOS logit alpha * (h . u) then wins the greedy argmax at steps
where the hidden state leans towards u more than usual, so greedy responses end at EOS after a
data-dependent, long-tailed number of tokens, some reaching the cap. alpha is calibrated
before timing so that the mean length is about `--mean_fraction` of `--new_tokens`: one
EOS-free greedy rollout of the static sampler, its teacher-forced hidden states, and for each
alpha the first step where alpha * (h . u) beats every other logit (the greedy trajectory
before the first EOS does not depend on alpha), bisected.
The EOS token never appears in prompts, so its input embedding is never read.

All three sides decode greedily from the same prompts with the same weights (exported with
`save_hf` for transformers) and stop rows at the same EOS id, so they see the same per-row
lengths as long as their tokens agree; the JSON reports the agreement and the lengths. Each
side is warmed up (compiles included), then timed over several runs alternating between the
sides, medians compared. tokens/s counts kept response tokens (EOS included) over wall seconds;
tokens/cpu_s over this process's CPU seconds (all threads), the steadier number on a shared
machine (the JSON has both, and the ratios of both).

    python benchmarks/rollout_engine.py                 # CPU, the issue's targets
    python benchmarks/rollout_engine.py --rows 32 --new_tokens 64 --runs 1   # a quick look

wasted_decode_fraction: the engine's decode slot-steps that produced no kept token (a slot
idle or stepping past its row's end inside a call) over all its decode slot-steps; token 0 of
each row comes from the prefill and is not a decode step. static_wasted_decode_fraction is the
same for the static sampler (rows x steps of its loop).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sampler_vs_hf  # noqa: E402  (same model, timing helpers and transformers side)

import tempo_jax.models as tm  # noqa: E402
from tempo_jax.sampling import Engine, Sampler, SamplingParams  # noqa: E402

EOS = 2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sampler_vs_hf.add_model_args(parser, preset=False)
    parser.add_argument("--rows", type=int, default=128, help="prompts (one greedy row each)")
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=256, help="the length cap L")
    parser.add_argument("--mean_fraction", type=float, default=0.3, help="target mean / L")
    parser.add_argument("--num_slots", type=int, default=48)
    parser.add_argument("--page_size", type=int, default=16)
    parser.add_argument("--steps_per_call", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_peer", action="store_true")
    return parser.parse_args()


def first_eos_lengths(scores: np.ndarray, others: np.ndarray, alpha: float, cap: int):
    """Per-row response length when EOS scores alpha * scores[:, t] against the best other
    logit others[:, t] at step t (EOS included; cap when it never wins)."""
    wins = alpha * scores > others
    return np.where(wins.any(axis=1), wins.argmax(axis=1) + 1, cap)


def calibrate(policy, prompts, args) -> tuple[float, np.ndarray]:
    """(alpha, u): u the unit mean direction of the final hidden states of an EOS-free greedy
    rollout, alpha bisected so that the predicted mean length is mean_fraction * L."""
    cap = args.new_tokens
    sampler = Sampler(policy, max_new_tokens=cap, prompt_buckets=(args.prompt,), eos_ids=())
    mask = np.ones_like(prompts)
    free = sampler.generate(nnx.state(policy), prompts, mask, sampling=SamplingParams(greedy=True))
    tokens, seq_mask = free.sequences()
    hidden = np.asarray(policy.hidden_states(tokens, seq_mask), np.float32)
    hidden = hidden[:, args.prompt - 1 : -1]  # [N, L, D] predicting response slots
    weight = np.asarray(policy.output_embedding(), np.float32)
    logits = hidden @ weight.T
    logits[..., EOS] = -np.inf
    others = logits.max(axis=-1)
    u = hidden.reshape(-1, hidden.shape[-1]).mean(axis=0)
    u /= np.linalg.norm(u)
    scores = hidden @ u
    target = args.mean_fraction * cap
    lo, hi = 0.0, 1e3
    for _ in range(60):
        mid = (lo + hi) / 2
        if first_eos_lengths(scores, others, mid, cap).mean() > target:
            lo = mid
        else:
            hi = mid
    return hi, u


def with_eos_row(policy, alpha: float, u: np.ndarray):
    """Sets the policy's (tied) embedding row EOS to alpha * u, in place; returns it."""
    embed = policy.model.embed_tokens
    embed[...] = embed[...].at[EOS].set(jnp.asarray(alpha * u, embed.dtype))
    return policy


def main() -> None:
    args = parse_args()
    args.preset = None
    args.batch = args.rows
    config = dataclasses.replace(sampler_vs_hf.model_config(args), initializer_range=0.2)
    policy = tm.Policy(config, rngs=nnx.Rngs(args.seed))
    rng = np.random.default_rng(args.seed)
    prompts = rng.integers(3, config.vocab_size, size=(args.rows, args.prompt)).astype(np.int32)
    alpha, u = calibrate(policy, prompts, args)
    policy = with_eos_row(policy, alpha, u)
    state = nnx.state(policy)
    mask = np.ones_like(prompts)
    greedy = SamplingParams(greedy=True)
    common = dict(max_new_tokens=args.new_tokens, prompt_buckets=(args.prompt,), eos_ids=(EOS,))
    static = Sampler(policy, **common)
    engine = Engine(
        policy,
        page_size=args.page_size,
        num_slots=args.num_slots,
        steps_per_call=args.steps_per_call,
        **common,
    )
    results: dict[str, np.ndarray] = {}

    def runner(name, sampler):
        def run():
            out = jax.device_get(sampler.generate(state, prompts, mask, sampling=greedy))
            results[name] = np.asarray(out.tokens)
            results[name + "_lengths"] = np.asarray(out.lengths)

        return run

    runners = {"engine": runner("engine", engine), "static": runner("static", static)}
    if not args.skip_peer:
        runners["peer"] = peer_runner(policy, prompts, args, results)
    seconds, cpu_seconds = sampler_vs_hf.interleaved_seconds(
        runners, args.runs, max(args.warmup, 1)
    )
    lengths = results["static_lengths"]
    kept = int(lengths.sum())
    stats = engine.last_stats
    out = {
        "model": "qwen3-shaped random, EOS row alpha * u",
        "layers": config.num_layers,
        "hidden": config.hidden_size,
        "vocab": config.vocab_size,
        "dtype": args.dtype,
        "rows": args.rows,
        "prompt": args.prompt,
        "max_new_tokens": args.new_tokens,
        "alpha": alpha,
        "length_mean": float(lengths.mean()),
        "length_p50": float(np.median(lengths)),
        "length_p90": float(np.percentile(lengths, 90)),
        "length_cap_fraction": float(np.mean(lengths == args.new_tokens)),
        "num_slots": args.num_slots,
        "page_size": args.page_size,
        "steps_per_call": args.steps_per_call,
        "runs": args.runs,
        "device": str(jax.devices()[0].device_kind),
        "cpu_threads": os.cpu_count(),
        "seconds": seconds["engine"],
        "static_seconds": seconds["static"],
        "cpu_seconds": cpu_seconds["engine"],
        "static_cpu_seconds": cpu_seconds["static"],
        "tokens_per_s": kept / seconds["engine"],
        "static_tokens_per_s": kept / seconds["static"],
        "tokens_per_cpu_s": kept / cpu_seconds["engine"],
        "static_tokens_per_cpu_s": kept / cpu_seconds["static"],
        "engine_vs_static": seconds["static"] / seconds["engine"],
        "engine_vs_static_cpu": cpu_seconds["static"] / cpu_seconds["engine"],
        "tokens_agree_fraction": float(np.mean(results["engine"] == results["static"])),
        "wasted_decode_fraction": 1 - stats["kept_tokens"] / stats["slot_steps"],
        "static_wasted_decode_fraction": 1
        - (kept - args.rows) / (args.rows * (int(lengths.max()) - 1)),
        "engine_calls": stats["calls"],
        "peak_pages": stats["peak_pages"],
    }
    if not args.skip_peer:
        out.update(
            peer="transformers.generate (torch CPU)",
            peer_seconds=seconds["peer"],
            peer_cpu_seconds=cpu_seconds["peer"],
            peer_tokens_per_s=kept / seconds["peer"],
            peer_tokens_per_cpu_s=kept / cpu_seconds["peer"],
            engine_vs_peer=seconds["peer"] / seconds["engine"],
            engine_vs_peer_cpu=cpu_seconds["peer"] / cpu_seconds["engine"],
            peer_tokens_agree_fraction=float(np.mean(results["peer"] == results["engine"])),
        )
    print(json.dumps(out))


def peer_runner(policy, prompts, args, results: dict):
    """transformers' greedy generate on the same weights, stopping rows at EOS (pad 0 after, as
    the samplers); each run stores its tokens [rows, L] in results["peer"]."""
    generate = sampler_vs_hf.peer_runner(policy, prompts, args, eos_token_id=EOS)

    def run():
        results["peer"] = generate()

    return run


if __name__ == "__main__":
    main()
