"""Policy-update speed: tempo_jax's compiled `policy_step` vs a PyTorch eager step, same weights.

A random Qwen3-shaped model (default: Qwen3-0.6B's proportions scaled down: 4 layers, hidden 512,
MLP 1536, 8 query / 4 key-value heads of 128, tied embeddings, vocab 32k) is built in tempo_jax,
exported with `save_hf` and loaded by transformers' `Qwen3ForCausalLM`, so both sides start from
identical weights. Both run the same GSPO update on the same batch (default 8 rows of 64 prompt +
192 response tokens, uneven response lengths): log-probs of the response tokens, the GSPO loss
(TEMPO_ALGORITHM.md §3, written out in torch for the peer), backward, global-norm clip 1.0,
AdamW (lr 1e-6, weight decay 0). The peer computes logits only for the slots that predict
response tokens (`logits_to_keep`) and uses transformers' default attention (SDPA). Each side is
warmed up (tempo_jax: compile), then the timed steps alternate between the two sides (tempo,
peer, tempo, ...) so that both see the same background load; medians are compared. Prints one
JSON object: tempo_tokens_per_s, peer_tokens_per_s, ratio (= tempo / peer), the settings, every
timed step, the fastest step of each side and the first-step losses of both sides (equal up to
float32 rounding). It also prints the step's model FLOPs (`step_gflop`: 6 x trunk parameters x
all tokens + 6 x LM-head parameters x response tokens + causal attention, forward + backward =
3 x forward), each side's achieved GFLOP/s, and the best float32 GEMM rate this machine reaches
in the same run (`gemm_peak_gflop_per_s`: torch and XLA on the LM-head GEMM and a square one),
so a ratio can be read against what the hardware allows.

Tokens per second count every slot of the batch (rows x (prompt + response)).

    python benchmarks/train_step_vs_torch.py                        # the CPU benchmark
    python benchmarks/train_step_vs_torch.py --rows 4 --response 64 --runs 3   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

# OpenMP threads that spin while idle fight XLA's threads (the two sides alternate) and any other
# load for the cores, which slowed the peer 5-20x on a busy 2-core machine; passive waiting is the
# fair setting for it. Must be set before torch starts its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import tempo_jax.models as tm  # noqa: E402
from tempo_jax import parallel, train  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv_heads", type=int, default=4)
    parser.add_argument("--head_dim", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--untied", action="store_true", help="separate lm_head (Qwen3-8B/14B)")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--response", type=int, default=192)
    parser.add_argument("--micro_batches", type=int, default=1)
    parser.add_argument("--vocab_chunk_size", type=int, default=8192)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    parser.add_argument("--skip_peer", action="store_true", help="time tempo_jax only")
    return parser.parse_args()


def model_config(args: argparse.Namespace) -> tm.ModelConfig:
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
        tie_word_embeddings=not args.untied,
    )


def make_batch(args: argparse.Namespace) -> train.RLBatch:
    """Left-padded prompts, right-padded responses of uneven length, GSPO inputs."""
    rng = np.random.default_rng(args.seed)
    n, p, length = args.rows, args.prompt, args.response
    tokens = rng.integers(0, args.vocab, (n, p + length)).astype(np.int32)
    prompt_lengths = rng.integers(p // 2, p + 1, n)
    response_lengths = rng.integers(length // 2, length + 1, n)
    prompt_mask = np.arange(p)[None, :] >= (p - prompt_lengths)[:, None]
    response_mask = np.arange(length)[None, :] < response_lengths[:, None]
    tokens[:, :p][~prompt_mask] = 0
    tokens[:, p:][~response_mask] = 0
    zeros = np.zeros((n, length), np.float32)
    return train.canonical_batch(
        train.RLBatch(
            tokens=tokens,
            attention_mask=np.concatenate([prompt_mask, response_mask], axis=1),
            response_mask=response_mask,
            # Near the model's own log-probs, so the ratio is ~1 as in a real update.
            old_logprobs=(-np.log(args.vocab) + 0.01 * rng.standard_normal((n, length))).astype(
                np.float32
            ),
            advantages=rng.standard_normal((n, length)).astype(np.float32),
            returns=zeros,
            old_values=zeros,
            is_labeled=np.zeros(n, bool),
            keep=np.ones(n, bool),
        )
    )


def timed(run_one) -> float:
    start = time.perf_counter()
    run_one()
    return time.perf_counter() - start


def tempo_side(args, policy: tm.Policy, batch: train.RLBatch) -> dict:
    settings = train.settings_from_config(
        {"micro_batches": args.micro_batches, "vocab_chunk_size": args.vocab_chunk_size}
    )
    graphdef, params = train.split_for_training(policy, settings)
    mesh = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    state = train.create_train_state(
        jax.tree.map(jnp.copy, params), settings.policy_optimizer, mesh
    )
    step = train.compile_train_step(
        train.make_policy_step(graphdef, settings),
        state,
        batch,
        mesh,
        micro_batches=settings.micro_batches,
        name="policy_step",
    )
    device_batch = jax.device_put(batch, step.in_shardings[1])
    box = {"state": state, "losses": []}

    def run_one():
        box["state"], metrics = step(box["state"], device_batch)
        box["losses"].append(float(metrics["loss"]))  # waits for the step to finish

    return run_one, box["losses"]


def torch_gspo_loss(torch, logprobs, old_logprobs, advantages, mask, clip_low, clip_high):
    """GSPO, seq-mean-token-mean (TEMPO_ALGORITHM.md §3), as `tempo_jax.rl.gspo_policy_loss`."""
    mask = mask.to(logprobs.dtype)
    logprobs = logprobs * mask
    delta = (logprobs - old_logprobs) * mask
    lengths = mask.sum(-1)
    seq_log_ratio = delta.sum(-1) / lengths.clamp(min=1.0)
    log_ratio = logprobs - logprobs.detach() + seq_log_ratio.detach()[:, None]
    ratio = torch.exp(torch.clamp(log_ratio, max=10.0))
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    row_means = (per_token * mask).sum(-1) / lengths.clamp(min=1.0)
    rows = (lengths > 0).to(logprobs.dtype).sum()
    return row_means.sum() / rows.clamp(min=1.0)


def torch_side(args, policy: tm.Policy, batch: train.RLBatch) -> dict:
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tm.save_hf(policy, tmp)
        model = transformers.Qwen3ForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
    length = args.response
    mask = torch.tensor(batch.attention_mask).long()
    inputs = {
        "input_ids": torch.tensor(batch.tokens).long(),
        "attention_mask": mask,
        # The same positions as tempo_jax for left-padded rows: cumsum(mask) - 1.
        "position_ids": torch.clamp(torch.cumsum(mask, -1) - 1, min=0),
    }
    targets = torch.tensor(batch.tokens[:, -length:]).long()
    response_mask = torch.tensor(batch.response_mask)
    old = torch.tensor(batch.old_logprobs)
    advantages = torch.tensor(batch.advantages)
    losses = []

    def run_one():
        optimizer.zero_grad(set_to_none=True)
        # Logits only at slots P - 1 .. S - 1; the last one predicts nothing and is dropped.
        logits = model(**inputs, logits_to_keep=length + 1).logits[:, :-1]
        logprobs = torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None])[..., 0]
        loss = torch_gspo_loss(torch, logprobs, old, advantages, response_mask, 3e-4, 5e-4)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())

    return run_one, losses


def step_gflop(args: argparse.Namespace) -> float:
    """Model FLOPs of one policy update (forward + backward = 3 x forward), in GFLOP."""
    q, kv = args.heads * args.head_dim, args.kv_heads * args.head_dim
    layer = args.hidden * (2 * q + 2 * kv) + 3 * args.hidden * args.intermediate
    tokens = args.rows * (args.prompt + args.response)
    trunk = 2 * args.layers * layer * tokens
    # Scores and weighted values, causal (half of the T x T square), per layer and head.
    attention = 2 * 2 * args.layers * args.rows * args.heads * args.head_dim
    attention *= (args.prompt + args.response) ** 2 / 2
    head = 2 * args.vocab * args.hidden * args.rows * args.response
    return 3 * (trunk + attention + head) / 1e9


def gemm_peak_gflop_per_s(args: argparse.Namespace) -> dict:
    """The best float32 GEMM rate of torch and XLA on this machine (median of 5 after warm-up)."""
    import torch

    rng = np.random.default_rng(0)
    shapes = [(args.rows * args.response, args.hidden, args.vocab), (2048, 2048, 2048)]
    matmul = jax.jit(jnp.matmul)
    rates = {}
    for m, k, n in shapes:
        a = rng.standard_normal((m, k), np.float32)
        b = rng.standard_normal((k, n), np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        for name, run_one in (
            ("torch", lambda ta=ta, tb=tb: ta @ tb),
            ("xla", lambda ja=ja, jb=jb: matmul(ja, jb).block_until_ready()),
        ):
            run_one()
            times = sorted(timed(run_one) for _ in range(5))
            rates[f"{name}_{m}x{k}x{n}"] = round(2 * m * k * n / times[2] / 1e9, 1)
    return rates


def main() -> None:
    args = parse_args()
    config = model_config(args)
    policy = tm.Policy(config, rngs=nnx.Rngs(args.seed))
    batch = make_batch(args)
    tokens = args.rows * (args.prompt + args.response)
    sides = {"tempo": tempo_side(args, policy, batch)}
    if not args.skip_peer:
        sides["peer"] = torch_side(args, policy, batch)
    first_call = {name: timed(run_one) for name, (run_one, _) in sides.items()}
    for _ in range(max(args.warmup - 1, 0)):
        for run_one, _ in sides.values():
            run_one()
    times = {name: [] for name in sides}
    for _ in range(args.runs):  # alternate, so that both sides share the background load
        for name, (run_one, _) in sides.items():
            times[name].append(timed(run_one))
    result = {
        "benchmark": "policy_step (GSPO + AdamW) vs transformers + torch eager, CPU, float32",
        "settings": {
            k: getattr(args, k)
            for k in (
                "layers",
                "hidden",
                "intermediate",
                "heads",
                "kv_heads",
                "head_dim",
                "vocab",
                "untied",
                "rows",
                "prompt",
                "response",
                "micro_batches",
                "vocab_chunk_size",
                "runs",
                "warmup",
            )
        },
        "tokens_per_step": tokens,
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
    }
    for name in sides:
        result[f"{name}_step_s_median"] = statistics.median(times[name])
        result[f"{name}_step_s_min"] = min(times[name])
        result[f"{name}_step_s_all"] = [round(t, 4) for t in times[name]]
        result[f"{name}_first_call_s"] = round(first_call[name], 3)
        result[f"{name}_first_loss"] = sides[name][1][0]
        result[f"{name}_tokens_per_s"] = tokens / result[f"{name}_step_s_median"]
    if "peer" in sides:
        import torch

        result["peer_threads"] = torch.get_num_threads()
        result["ratio"] = result["tempo_tokens_per_s"] / result["peer_tokens_per_s"]
        result["ratio_of_fastest_steps"] = result["peer_step_s_min"] / result["tempo_step_s_min"]
        gemm = gemm_peak_gflop_per_s(args)
        result["gemm_gflop_per_s"] = gemm
        result["gemm_peak_gflop_per_s"] = max(gemm.values())
    result["step_gflop"] = step_gflop(args)
    for name in sides:
        result[f"{name}_gflop_per_s"] = result["step_gflop"] / result[f"{name}_step_s_median"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
