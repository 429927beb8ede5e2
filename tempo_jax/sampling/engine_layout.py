"""`EngineLayout`: where the paged rollout engine's arrays live on a mesh, and its pool's size.

    layout = EngineLayout.create(run_mesh, rules, tensor=4, config=policy.config)
    layout.data, layout.tensor                      # row shards x weight / KV-head split
    layout.weight_shardings(state), layout.decode_weight_shardings(axes, abstract)

The engine runs on a decode mesh of its own over the run mesh's devices, in their order (so
every jit sees one device assignment): data = devices / tensor row shards x `tensor`. A run
mesh of None means the first local device (1 x 1): one code path, today's engine on one chip.

- Weights: cast to the compute dtype (bfloat16 in the recipes) and laid out by
  `parallel.inference_rules(rules)` on the decode mesh: heads, KV heads, MLP and vocabulary
  over `tensor`, nothing over the row axes, so a row shard holds its tensor group's slice of
  every weight and no decode step gathers one (Megatron-style: XLA adds the all-reduces of the
  attention and MLP outputs).
- Rows: the chunk's prompts (padded to a multiple of `data`), their rows and the decode slots go
  over the row axes (data, fsdp): shard i holds prompts [i B/d, (i + 1) B/d), their samples and
  slots [i S/d, (i + 1) S/d).
- Pools [K, pages, page_size, Dh]: KV heads over `tensor`, pages over the row axes. Shard i owns
  its `pages / data` pages, numbered locally (local page 0 is its scratch page), and page tables
  hold local numbers. Every access through a table (prompt page writes, page copies, decode
  writes and the paged attention) runs per shard under `jax.shard_map`: XLA's partitioner cannot
  know that the indices stay inside a shard and would gather the whole pool.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tempo_jax import parallel
from tempo_jax.models import Policy
from tempo_jax.models.config import ModelConfig
from tempo_jax.parallel.activations import ActivationSharding
from tempo_jax.sampling.layer_decode import DecodeWeights

ROWS = ("data", "fsdp")  # the decode mesh's row axes (fsdp is 1 there)
TENSOR = "tensor"
# Full-attention pool pages kept when the budget would allow fewer (the engine checks, when it
# runs, that a shard's pool holds its prompts plus one row at full length).
MIN_POOL_PAGES = 2
# The tensor-parallel decode split when neither the recipe nor the mesh names one: one v5p / v6e
# host's 4 chips (the all-reduces stay on a host's ICI ring).
DEFAULT_DECODE_TENSOR = 4
# The share of a chip's HBM the engine sizes its pool for (`tempo-jax compile`'s limit).
HBM_FRACTION = 0.9
# Kept free beside the pool for the calls' activations and logits, besides the prefill's cache
# (counted from its shapes) and the decode weights: the sharded prefill's temporaries beyond
# its copy of the decode weights were 2.6 GiB (Qwen3-8B, 4 prompts a row shard) and 5.4 GiB
# (Qwen3-14B, 4 prompts) on v5p, and with 5 GiB (less the prefill's cache) 14B's prefill was
# 0.1 GiB over the 90% limit.
WORKSPACE_BYTES = 6 * 2**30


@dataclasses.dataclass(frozen=True, eq=False)
class EngineLayout:
    """The decode mesh and the specs of the engine's arrays (see the module docstring).

    Attributes:
      mesh: the decode mesh (data, fsdp = 1, tensor).
      rules: the inference rules weights and activations follow.
      data: row shards.
      tensor: the decode weights' and KV heads' split.
    """

    mesh: Mesh
    rules: dict[str, tuple[str, ...]]
    data: int
    tensor: int

    @classmethod
    def create(
        cls, mesh: Mesh | None, rules: Any, tensor: int, config: ModelConfig
    ) -> EngineLayout:
        """The layout over `mesh`'s devices (None: the first local device) split `tensor` ways.

        Raises:
          ValueError: when `tensor` does not divide the devices, the KV heads or the heads, or
            the mesh spans devices this process does not address with tensor > 1 (a tensor
            group must be one host's).
        """
        devices = [jax.local_devices()[0]] if mesh is None else list(mesh.devices.flat)
        for what, count in (
            ("devices", len(devices)),
            ("KV heads", config.num_kv_heads),
            ("heads", config.num_heads),
        ):
            if tensor < 1 or count % tensor:
                raise ValueError(
                    f"rollout.paged.decode_tensor={tensor} does not divide the {count} {what}"
                )
        data = len(devices) // tensor
        decode_mesh = Mesh(np.array(devices, dtype=object).reshape(data, 1, tensor),
                           parallel.MESH_AXES)  # fmt: skip
        inference = parallel.inference_rules(parallel.make_rules(rules))
        if config.vocab_size % tensor:
            # A vocabulary the split does not divide (OLMo3's 100278 over 4) stays whole on
            # every chip: the embedding and the head, and the logits.
            inference = {**inference, "vocab": (), "activation_vocab": ()}
        return cls(decode_mesh, inference, data, tensor)

    # --- shardings -------------------------------------------------------------------------------

    def spec(self, *entries: Any) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(*entries))

    @property
    def rows(self) -> NamedSharding:
        """Arrays whose dim 0 is prompts, rows or slots."""
        return self.spec(ROWS)

    @property
    def replicated(self) -> NamedSharding:
        return self.spec()

    @property
    def pool(self) -> NamedSharding:
        """[K, pages, page_size, Dh]: KV heads over tensor, pages over the row axes."""
        return self.spec(TENSOR, ROWS)

    @property
    def logits(self) -> NamedSharding:
        """[S, V] logits: rows over the row axes, vocabulary as the head's (tensor or whole)."""
        return self.spec(ROWS, self.rules.get("vocab") or None)

    @property
    def activations(self) -> ActivationSharding:
        """The activation constraints the model's blocks apply (`parallel.constrain`)."""
        return ActivationSharding.create(self.mesh, self.rules)

    def weight_shardings(self, state: Any) -> Any:
        """The parameter state's decode layout (Variables kept), checked for divisibility."""
        return parallel.state_shardings(state, self.mesh, self.rules)

    def decode_weight_shardings(self, axes: tuple[DecodeWeights, tuple]) -> tuple[Any, Any]:
        """(DecodeWeights of shardings, head sharding) from `weight_axes(policy)`."""
        weights, head = axes

        def one(names: tuple) -> NamedSharding:
            return NamedSharding(self.mesh, parallel.logical_to_spec(names, self.rules))

        layers = tuple({k: one(v) for k, v in layer.items()} for layer in weights.layers)
        return DecodeWeights(one(weights.embed), layers, one(weights.final_norm)), one(head)

    def put(self, tree: Any, sharding: Any) -> Any:
        """Host values (equal on every process) as global arrays with `sharding`."""
        return parallel.global_from_host(tree, sharding)

    # --- per-shard functions ---------------------------------------------------------------------

    def local(self, fn: Callable, in_specs: tuple, out_specs: Any) -> Callable:
        """`fn` run per shard of the decode mesh (PartitionSpecs such as `POOL_SPEC`)."""
        return jax.shard_map(
            fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
        )


# Specs of the per-shard functions' operands.
POOL_SPEC = PartitionSpec(TENSOR, ROWS)  # pools [K, pages, ps, Dh]; prompt pages [K, B, ...]
ROW_SPEC = PartitionSpec(ROWS)
HEADS_SPEC = PartitionSpec(ROWS, None, TENSOR, None)  # q / k / v / attention [S, 1, heads, Dh]


def decode_tensor(setting: str, tensor: int, mesh: Mesh | None, config: ModelConfig) -> int:
    """The decode weights' split for `rollout.paged.decode_layout` = `setting`: 1 for
    "replicated"; for "tensor" and "auto" `tensor` (`rollout.paged.decode_tensor`; 0 = the
    mesh's tensor axis when above 1, else `DEFAULT_DECODE_TENSOR`), which "auto" drops to 1 when
    it does not divide the devices, the heads and the KV heads (`tempo-jax compile`'s estimate
    picks tensor-parallel decode for every AIME recipe).

    Raises:
      ValueError: "tensor" with a split that does not divide them.
    """
    if setting == "replicated":
        return 1
    mesh_tensor = mesh.shape["tensor"] if mesh is not None else 1
    tensor = tensor or (mesh_tensor if mesh_tensor > 1 else DEFAULT_DECODE_TENSOR)
    devices = mesh.size if mesh is not None else 1
    if all(x % tensor == 0 for x in (devices, config.num_heads, config.num_kv_heads)):
        return tensor
    if setting == "tensor":
        raise ValueError(
            f"rollout.paged.decode_layout=tensor: decode_tensor={tensor} does not divide the "
            f"{devices} devices, {config.num_heads} heads and {config.num_kv_heads} KV heads"
        )
    return 1


def weight_axes(policy: Policy) -> tuple[DecodeWeights, tuple]:
    """The logical axes of `prepare_weights`' outputs: (DecodeWeights of axes tuples, the head's)
    from the policy's Params (a layer's slice drops the stacked "layers" axis)."""
    model = policy.model
    axes = parallel.logical_axes_of
    per_name = {
        name: axes(value)[1:]
        for name, value in vars(model.layers).items()
        if isinstance(value, nnx.Param)
    }
    layers = tuple(dict(per_name) for _ in range(policy.config.num_layers))
    head = model.embed_tokens if policy.lm_head is None else policy.lm_head
    return DecodeWeights(axes(model.embed_tokens), layers, axes(model.norm)), axes(head)


def tree_bytes_per_chip(tree: Any, shardings: Any) -> int:
    """Bytes one chip holds of arrays / ShapeDtypeStructs `tree` laid out by `shardings`."""
    leaves = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
    return sum(
        math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
        for x, s in zip(jax.tree.leaves(tree), leaves, strict=True)
    )


def page_bytes_per_chip(config: ModelConfig, page_size: int, tensor: int) -> int:
    """Bytes one chip holds of one full-attention page over every full-attention layer."""
    full = sum(k != "sliding_attention" for k in config.resolved_layer_types)
    itemsize = np.dtype(config.compute_dtype).itemsize
    return 2 * full * config.num_kv_heads // tensor * config.head_dim * itemsize * page_size


def pool_pages_for_budget(
    config: ModelConfig,
    page_size: int,
    budget_bytes: int,
    ring: int,
    ring_slots: int,
    tensor: int = 1,
) -> int:
    """Full-attention pool pages of one row shard (its scratch page included) that fit
    `budget_bytes` on each of its chips after the sliding layers' rings (`ring_slots` rings of
    `ring` pages, plus the scratch page), KV heads split `tensor` ways."""
    per_token = 2 * config.num_kv_heads // tensor * config.head_dim
    per_token *= np.dtype(config.compute_dtype).itemsize
    sliding = sum(k == "sliding_attention" for k in config.resolved_layer_types)
    ring_bytes = (1 + ring_slots * ring) * page_size * per_token * sliding if sliding else 0
    page = max(page_bytes_per_chip(config, page_size, tensor), 1)
    return max(int((budget_bytes - ring_bytes) // page), MIN_POOL_PAGES)


def engine_pool_pages(
    config: ModelConfig,
    layout: EngineLayout,
    page_size: int,
    ring: int,
    slots: int,
    prompts: int,
    bucket: int,
    free_bytes: int,
) -> int:
    """Full-attention pool pages of one row shard when each of its chips has `free_bytes` left
    after the resident state and the decode weights: minus the prefill's cache of the shard's
    `prompts` prompts of width `bucket` and `WORKSPACE_BYTES`, and the rings of its `slots`
    slots and prompts."""
    itemsize = np.dtype(config.compute_dtype).itemsize
    kv = config.num_kv_heads // layout.tensor
    prefill = 2 * config.num_layers * prompts * bucket * kv * config.head_dim * itemsize
    budget = free_bytes - prefill - WORKSPACE_BYTES
    return pool_pages_for_budget(config, page_size, budget, ring, slots + prompts, layout.tensor)


def host(tree: Any) -> Any:
    """Device results as numpy arrays of their global values, on every process."""
    return parallel.host_from_global(tree)


def same_on_every_process(value: int) -> int:
    """Process 0's `value` everywhere (sizes from local memory must agree between hosts)."""
    return int(parallel.broadcast_from_main(np.asarray(value, np.int64)))


def device_budget_bytes(mesh: Mesh, fraction: float) -> int | None:
    """`fraction` of the smallest HBM among this process's devices of `mesh` minus what is in use
    there now, or None where devices report no memory (CPU)."""
    budgets = []
    for device in mesh.devices.flat:
        if device.process_index != jax.process_index():
            continue
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if not stats or "bytes_limit" not in stats:
            return None
        budgets.append(int(fraction * stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))
    return min(budgets) if budgets else None
