"""Supervised fine-tuning of the policy on labeled worked solutions (`tempo-jax sft`).

So that the CPU default starts test-time training from a model with middling accuracy, the tiny
policy is first taught the task's solution format on D_L. Sequences use the same layout as RL
batches: the prompt left-padded to P, the response (solution + EOS) right-padded to L, so the
loss reads the response log-probs exactly where the policy step does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from tempo_jax import parallel
from tempo_jax.data.prompt import PromptFormatter
from tempo_jax.data.records import Row
from tempo_jax.train.batch import Sequences
from tempo_jax.train.forward import response_token_stats


@dataclasses.dataclass(frozen=True)
class SFTBatch:
    """Teacher-forcing arrays.

    Attributes:
      tokens: [B, P + L] int32, left-padded prompt then right-padded response.
      attention_mask: [B, P + L] int32.
      response_mask: [B, L] int32, 1 on solution and EOS tokens.
      truncated: how many solutions were cut at L tokens.
    """

    tokens: np.ndarray
    attention_mask: np.ndarray
    response_mask: np.ndarray
    truncated: int


def sft_batch(
    rows: Sequence[Row],
    formatter: PromptFormatter,
    prompt_length: int,
    response_length: int,
) -> SFTBatch:
    """Tokenises rows into an `SFTBatch` (prompts left-truncated to P, solutions cut at L)."""
    tok = formatter.tokenizer
    b = len(rows)
    tokens = np.full((b, prompt_length + response_length), tok.pad_id, np.int32)
    mask = np.zeros_like(tokens)
    response_mask = np.zeros((b, response_length), np.int32)
    truncated = 0
    for i, row in enumerate(rows):
        if not row.solution:
            raise ValueError(f"row {row.row_id!r} has no solution to fine-tune on")
        prompt = formatter.encode(row.question)[-prompt_length:]
        response = tok.encode(row.solution) + [tok.eos_id]
        if len(response) > response_length:
            truncated += 1
            response = response[:response_length]
        tokens[i, prompt_length - len(prompt) : prompt_length] = prompt
        mask[i, prompt_length - len(prompt) : prompt_length] = 1
        tokens[i, prompt_length : prompt_length + len(response)] = response
        mask[i, prompt_length : prompt_length + len(response)] = 1
        response_mask[i, : len(response)] = 1
    return SFTBatch(tokens, mask, response_mask, truncated)


def response_logprobs(model, tokens, attention_mask, response_mask) -> jax.Array:
    """log pi(y_t | x, y_<t) of the last L tokens: [B, L] float32, computed in vocabulary chunks
    (the RL steps' slot layout: token t at slot P + t is predicted from slot P + t - 1)."""
    seqs = Sequences(tokens, attention_mask, response_mask)
    return response_token_stats(model, seqs, vocab_chunk_size=8192).logprobs


def make_optimizer(
    learning_rate: float, total_steps: int, warmup_steps: int
) -> optax.GradientTransformation:
    """AdamW with linear warm-up and cosine decay to 10%, global-norm clip 1."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        learning_rate,
        max(warmup_steps, 1),
        max(total_steps, warmup_steps + 1),
        end_value=learning_rate * 0.1,
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))


def sft_optimizer(sft_config, steps: int | None = None) -> optax.GradientTransformation:
    """`make_optimizer` from the `sft` config section (its schedule over `steps`, default
    `sft.steps`)."""
    steps = sft_config.steps if steps is None else steps
    return make_optimizer(sft_config.learning_rate, steps, sft_config.warmup_steps)


def make_sft_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation):
    """A jitted pure step `(params, opt_state, tokens, mask, response_mask) -> (params,
    opt_state, metrics)` minimising the token-mean negative log-likelihood of the responses."""

    def loss_fn(params, tokens, mask, response_mask):
        model = nnx.merge(graphdef, params)
        logp = response_logprobs(model, tokens, mask, response_mask)
        weights = response_mask.astype(jnp.float32)
        nll = -(logp * weights).sum() / jnp.maximum(weights.sum(), 1.0)
        return nll

    @jax.jit
    def step(params, opt_state, tokens, mask, response_mask):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, mask, response_mask)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"sft/loss": loss, "sft/grad_norm": optax.global_norm(grads)}

    return step


def batches(rows: Iterator[Row], batch_size: int) -> Iterator[list[Row]]:
    """Groups an endless row stream into lists of `batch_size` rows."""
    while True:
        yield [next(rows) for _ in range(batch_size)]


def run_sft(run, policy, sft_dir: str, steps: int | None = None):
    """Fine-tunes `policy` on D_L solutions for `steps` steps (default `config.sft.steps`; the
    rest of the recipe is `config.sft`'s) or loads the result of an earlier run from `sft_dir`;
    returns the fine-tuned policy module.

    SFT is not resumable mid-way (it is short); its final parameters are checkpointed, so a
    rerun of the same command skips it. Several processes each run the same (unsharded) SFT on
    identical data; only process 0 writes sft/metrics.jsonl.
    """
    from tqdm import tqdm

    from tempo_jax.train.checkpointing import Checkpointer
    from tempo_jax.train.metric_writers import JsonlWriter

    cfg = run.config.sft
    steps = cfg.steps if steps is None else steps
    graphdef, params = nnx.split(policy, nnx.Param)
    # Several processes: each fine-tunes its own identical copy on one local device (the SFT
    # step is not sharded); Orbax needs global arrays, so the checkpoint holds them replicated.
    multiprocess = jax.process_count() > 1
    replicated = NamedSharding(run.mesh, PartitionSpec())
    main = parallel.is_main_process()
    with Checkpointer(sft_dir, keep=1, async_save=False) as ckpt:
        if ckpt.latest_good_step() == steps:
            abstract = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(
                    x.shape, x.dtype, sharding=replicated if multiprocess else x.sharding
                ),
                params,
            )
            items, _ = ckpt.restore(steps, {"params": abstract})
            if multiprocess:
                return nnx.merge(graphdef, _uncommitted(items["params"]))
            return nnx.merge(graphdef, items["params"])
        optimizer = sft_optimizer(cfg, steps)
        opt_state = optimizer.init(params)
        step = make_sft_step(graphdef, optimizer)
        rows = iter(run.data.rows("labeled", seed=run.config.seed))
        writer = JsonlWriter(f"{sft_dir}/metrics.jsonl")
        if main:
            writer.truncate_after(-1)
        bar = tqdm(total=steps, desc="sft", disable=not (run.config.progress_bar and main))
        for i, chunk in zip(range(steps), batches(rows, cfg.batch_size), strict=False):
            b = sft_batch(chunk, run.data.formatter, run.prompt_width, run.response_length)
            params, opt_state, metrics = step(
                params, opt_state, b.tokens, b.attention_mask, b.response_mask
            )
            if main and ((i + 1) % 10 == 0 or i + 1 == steps):
                record = {k: float(v) for k, v in jax.device_get(metrics).items()}
                writer.write({"step": i + 1, **record, "sft/truncated": b.truncated})
                bar.set_postfix(loss=f"{record['sft/loss']:.3f}", refresh=False)
            bar.update(1)
        bar.close()
        if multiprocess:
            host = jax.device_get(params)
            saved = parallel.global_from_host(host, replicated)
            ckpt.save(steps, {"params": saved}, {"sft_steps": steps})
            ckpt.wait()
            return nnx.merge(graphdef, _uncommitted(host))
        ckpt.save(steps, {"params": params}, {"sft_steps": steps})
        ckpt.wait()
    return nnx.merge(graphdef, params)


def _uncommitted(params):
    """Host or replicated parameters as uncommitted local arrays: what a freshly initialised
    module holds, so that `create_train_state` can place them on a multi-process mesh."""
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), params)
