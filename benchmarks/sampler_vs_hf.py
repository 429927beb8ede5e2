"""Greedy generation speed: tempo_jax's Sampler vs transformers' `generate`, same weights.

A random Qwen3-shaped model (default: 4 layers, hidden 256, vocab 32k) is built in tempo_jax,
exported with `save_hf` and loaded by `transformers.AutoModelForCausalLM`, so both sides run
identical weights. Both generate greedily from the same prompts (batch 64, prompt 64, 128 new
tokens, no EOS so every row runs the full length); each side is warmed up (for tempo_jax this
includes the compile), then timed over several runs, alternating between the two sides so
that load changes on a shared machine hit both alike, and the medians compared. Prints one JSON
object: tempo_tokens_per_s, peer_tokens_per_s, ratio (= tempo / peer), plus the settings, the
median seconds of each side and the fraction of generated tokens on which the two sides agree.

    python benchmarks/sampler_vs_hf.py                      # the CPU benchmark of the issue
    python benchmarks/sampler_vs_hf.py --batch 8 --new_tokens 16 --runs 2   # a quick look
    python benchmarks/sampler_vs_hf.py --preset qwen3_0p6b --batch 256 --skip_peer \
        --dtype bfloat16 --peak_bandwidth_gbs 4800                         # GPU (H200)

`--max_rows_per_chunk R` adds a third side, the same Sampler sampling in chunks of R rows
(`rollout.max_rows_per_chunk`), timed interleaved with the unchunked one: chunked_tokens_per_s,
chunked_vs_unchunked (= chunked / unchunked tokens/s) and whether their tokens are identical.

`--breakdown` also times the parts of one tempo_jax rollout separately (prefill, one decode
step of the loop, its output projection, one sampling step) to show where the time goes.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import tempo_jax.models as tm
from tempo_jax.sampling import Sampler, SamplingParams
from tempo_jax.sampling.decode import cast_for_compute
from tempo_jax.sampling.layer_decode import decode_step, decode_weights, split_cache
from tempo_jax.sampling.params import RowSamplingParams
from tempo_jax.sampling.token_sampling import sample_tokens


def add_model_args(parser: argparse.ArgumentParser, preset: bool = True) -> None:
    """The random Qwen3-shaped model's flags (`model_config`), shared by rollout_engine.py;
    `preset`: also --preset (a tempo_jax.models preset instead)."""
    if preset:
        parser.add_argument("--preset", default=None, help="a tempo_jax.models preset instead")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=768)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv_heads", type=int, default=2)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dtype", default="float32", help="compute and parameter dtype")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_peer", action="store_true", help="time tempo_jax only")
    parser.add_argument("--breakdown", action="store_true", help="time prefill / step / sample")
    parser.add_argument(
        "--max_rows_per_chunk",
        type=int,
        default=0,
        help="also time the sampler in chunks of this many rows (0 = do not)",
    )
    parser.add_argument(
        "--peak_bandwidth_gbs",
        type=float,
        default=None,
        help="device memory bandwidth (GB/s); adds the bandwidth-roofline fraction",
    )
    return parser.parse_args()


def model_config(args: argparse.Namespace) -> tm.ModelConfig:
    if args.preset:
        return tm.get_preset(args.preset, dtype=args.dtype, param_dtype=args.dtype)
    return tm.ModelConfig(
        arch="qwen3",
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        head_dim=args.head_dim,
        rope=tm.RopeConfig(theta=1_000_000.0),
        tie_word_embeddings=True,
        dtype=args.dtype,
        param_dtype=args.dtype,
    )


def median_seconds(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_seconds(runners: dict, runs: int, warmup: int) -> tuple[dict, dict]:
    """Median wall and CPU seconds (this process, all threads) of each runner, runs alternating
    between them (A B A B ...), so that a change in machine load over time hits both sides alike.
    On a machine shared with other work, CPU seconds are the steadier measure."""
    for _ in range(warmup):
        for fn in runners.values():
            fn()
    wall = {name: [] for name in runners}
    cpu = {name: [] for name in runners}
    for _ in range(runs):
        for name, fn in runners.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    median = lambda times: {name: statistics.median(t) for name, t in times.items()}  # noqa: E731
    return median(wall), median(cpu)


def tempo_runner(policy, prompts, args, max_rows_per_chunk=None):
    """A callable running one greedy tempo_jax rollout; returns its response tokens [B, L]."""
    sampler = Sampler(
        policy,
        max_new_tokens=args.new_tokens,
        prompt_buckets=(args.prompt,),
        eos_ids=(),
        pad_id=0,
        max_rows_per_chunk=max_rows_per_chunk,
    )
    state = nnx.state(policy)
    mask = np.ones_like(prompts)
    greedy = SamplingParams(greedy=True)

    def run():
        out = sampler.generate(state, prompts, mask, n=1, sampling=greedy, seed=0)
        return np.asarray(jax.block_until_ready(out).tokens)

    return run


def peer_runner(policy, prompts, args, eos_token_id: int | None = None):
    """A callable running transformers' greedy generate on the same weights; returns [B, L]:
    L tokens a row without `eos_token_id`, else rows stop at it (then 0s, as the samplers)."""
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as path:
        tm.save_hf(policy, path)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, args.dtype)
        )
    model.eval()
    input_ids = torch.tensor(prompts, dtype=torch.long)
    mask = torch.ones_like(input_ids)
    length = {"min_new_tokens": args.new_tokens} if eos_token_id is None else {}

    def run():
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=args.new_tokens,
                **length,
                do_sample=False,
                eos_token_id=eos_token_id,
                pad_token_id=0,
            )
        generated = out[:, args.prompt :].numpy()
        if eos_token_id is None:
            return generated
        tokens = np.zeros((len(prompts), args.new_tokens), np.int32)
        tokens[:, : generated.shape[1]] = generated
        return tokens

    return run


def breakdown(policy, prompts, args) -> dict[str, float]:
    """Median seconds of the parts of a rollout, each jitted alone: the prefill, one decode step
    of the sampler's loop body (model forward and logits), the output projection within it, and
    one greedy sampling step."""
    graphdef, state = nnx.split(policy)
    state = cast_for_compute(state, policy.config.compute_dtype)
    batch, width = prompts.shape
    slots = width + args.new_tokens - 1
    tokens = jnp.asarray(prompts)
    mask = jnp.ones_like(tokens)

    @jax.jit
    def prefill(state, tokens, mask):
        model = nnx.merge(graphdef, state)
        logits, cache = model.prefill(tokens, mask, model.init_cache(batch, width))
        pad = ((0, 0), (0, 0), (0, slots - width), (0, 0), (0, 0))
        cache = tm.KVCache(k=jnp.pad(cache.k, pad), v=jnp.pad(cache.v, pad))
        return logits, split_cache(cache)

    # As in the loop: weights sliced once outside, caches updated in place (donated).
    @functools.partial(jax.jit, donate_argnums=(1,))
    def step(weights, caches, last, index):
        model = nnx.merge(graphdef, state)
        key_mask = jnp.broadcast_to(jnp.arange(slots)[None, :] < index, (batch, slots))
        positions = jnp.full((batch,), index)
        return decode_step(model, weights, last, positions, key_mask, caches, index)

    @jax.jit
    def project(state, hidden):
        return nnx.merge(graphdef, state).logits_from_hidden(hidden)

    params = RowSamplingParams(
        temperature=jnp.ones(batch),
        top_k=jnp.zeros(batch, jnp.int32),
        top_p=jnp.ones(batch),
        greedy=jnp.ones(batch, bool),
    )
    keys = jax.random.split(jax.random.key(0), batch)
    sample = jax.jit(lambda logits: sample_tokens(logits, keys, params, 64))
    logits, caches = jax.block_until_ready(prefill(state, tokens, mask))
    last = jnp.argmax(logits, -1).astype(jnp.int32)
    index = jnp.int32(width + args.new_tokens // 2)
    weights = jax.jit(lambda s: decode_weights(nnx.merge(graphdef, s)))(state)
    holder = {"caches": caches}

    def one_step():
        logits, holder["caches"] = step(weights, holder["caches"], last, index)
        jax.block_until_ready(logits)

    hidden = jnp.ones((batch, policy.config.hidden_size), policy.config.compute_dtype)
    runs = max(args.runs, 3)
    return {
        "prefill_s": median_seconds(
            lambda: jax.block_until_ready(prefill(state, tokens, mask)), runs, 1
        ),
        "decode_step_s": median_seconds(one_step, runs * 4, 1),
        "output_projection_s": median_seconds(
            lambda: jax.block_until_ready(project(state, hidden)), runs * 4, 1
        ),
        "greedy_sample_step_s": median_seconds(
            lambda: jax.block_until_ready(sample(logits)), runs * 4, 1
        ),
    }


def bandwidth_roofline(config: tm.ModelConfig, args, seconds: float) -> dict[str, float]:
    """Decode tokens/s if every step only moved its minimum bytes at the peak bandwidth.

    Per decode step: every weight once in the compute dtype (the input embedding only for the B
    looked-up rows; the output projection whole), plus the keys and values of the slots each
    row attends to (prompt + tokens so far, averaged over the steps). Prefill is not counted
    (it is compute-bound), so the fraction is a lower bound of the decode loop's.
    """
    itemsize = np.dtype(jnp.dtype(config.dtype)).itemsize
    d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    h, k, dh = config.num_heads, config.num_kv_heads, config.head_dim
    per_layer = d * (h + 2 * k) * dh + h * dh * d + 3 * d * f + 2 * d + 2 * dh
    weights = config.num_layers * per_layer + v * d + d + args.batch * d
    mean_slots = args.prompt + (args.new_tokens - 1) / 2
    cache = 2 * config.num_layers * args.batch * mean_slots * k * dh
    step_bytes = (weights + cache) * itemsize
    roofline = args.batch * args.peak_bandwidth_gbs * 1e9 / step_bytes
    achieved = args.batch * args.new_tokens / seconds
    return {
        "decode_step_bytes": step_bytes,
        "roofline_tokens_per_s": roofline,
        "roofline_fraction": achieved / roofline,
    }


def main() -> None:
    args = parse_args()
    config = model_config(args)
    policy = tm.Policy(config, rngs=nnx.Rngs(args.seed))
    rng = np.random.default_rng(args.seed)
    prompts = rng.integers(1, config.vocab_size, size=(args.batch, args.prompt)).astype(np.int32)
    generated = args.batch * args.new_tokens

    runners = {"tempo": tempo_runner(policy, prompts, args)}
    if args.max_rows_per_chunk:
        runners["chunked"] = tempo_runner(policy, prompts, args, args.max_rows_per_chunk)
    if not args.skip_peer:
        runners["peer"] = peer_runner(policy, prompts, args)
    seconds, _ = interleaved_seconds(runners, args.runs, max(args.warmup, 1))
    result = {
        "model": args.preset or "qwen3-shaped random",
        "layers": config.num_layers,
        "hidden": config.hidden_size,
        "vocab": config.vocab_size,
        "dtype": args.dtype,
        "batch": args.batch,
        "prompt": args.prompt,
        "new_tokens": args.new_tokens,
        "runs": args.runs,
        "device": str(jax.devices()[0].device_kind),
        "cpu_threads": os.cpu_count(),
        "tempo_seconds": seconds["tempo"],
        "tempo_tokens_per_s": generated / seconds["tempo"],
    }
    if not args.skip_peer:
        result.update(
            peer="transformers.generate (torch CPU)",
            peer_seconds=seconds["peer"],
            peer_tokens_per_s=generated / seconds["peer"],
            ratio=seconds["peer"] / seconds["tempo"],
            tokens_agree_fraction=float(np.mean(runners["peer"]() == runners["tempo"]())),
        )
    if args.max_rows_per_chunk:
        result.update(
            max_rows_per_chunk=args.max_rows_per_chunk,
            chunked_seconds=seconds["chunked"],
            chunked_tokens_per_s=generated / seconds["chunked"],
            chunked_vs_unchunked=seconds["tempo"] / seconds["chunked"],
            chunked_tokens_identical=bool(np.array_equal(runners["chunked"](), runners["tempo"]())),
        )
    if args.peak_bandwidth_gbs:
        result.update(bandwidth_roofline(config, args, seconds["tempo"]))
    if args.breakdown:
        result["breakdown"] = breakdown(policy, prompts, args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
