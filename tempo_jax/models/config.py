"""Model configuration: one frozen dataclass for Qwen3 and OLMo3 decoders, plus named presets.

`ModelConfig` describes the architecture (what a checkpoint's config.json says) and two runtime
choices: `param_dtype` (how weights are stored) and `dtype` (the compute dtype of activations).
Change either with `dataclasses.replace(config, dtype="bfloat16")` or, for a built model,
`tempo_jax.models.with_dtypes`.

Presets (`get_preset(name)`, `PRESETS`): `tiny`, `tiny_olmo3` (fast test models) and `qwen3_0p6b,
qwen3_1p7b, qwen3_4b, qwen3_8b, qwen3_14b, olmo3_7b`, whose numbers come from the public
checkpoints' config.json files (Hugging Face repos named next to each preset) as transformers 5.x
reads them (`Qwen3Config`, `Olmo3Config`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax.numpy as jnp

from tempo_jax.models.attention import IMPLEMENTATIONS

Arch = Literal["qwen3", "olmo3"]
LayerType = Literal["full_attention", "sliding_attention"]

ARCHS = ("qwen3", "olmo3")
LAYER_TYPES = ("full_attention", "sliding_attention")
DTYPES = ("float32", "bfloat16")
ROPE_KINDS = ("default", "yarn")


def dtype_name(dtype: object) -> str:
    """Normalises a dtype given as a string, numpy or jnp dtype to its name ('float32', ...)."""
    return jnp.dtype(dtype).name


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding settings for one kind of layer (transformers' `rope_parameters`).

    Attributes:
      theta: base wavelength (`rope_theta`).
      kind: "default" (plain RoPE) or "yarn" (YaRN context extension, as OLMo3 7B uses on its
        full-attention layers).
      factor: YaRN scaling factor.
      original_max_position_embeddings: YaRN pre-extension context length.
      beta_fast: YaRN ramp boundary (extrapolation), transformers' default 32.
      beta_slow: YaRN ramp boundary (interpolation), transformers' default 1.
      attention_factor: YaRN cos/sin scale; None = 0.1 * ln(factor) + 1 as transformers infers it.
      truncate: YaRN rounds the correction range to integers (transformers' default True).
    """

    theta: float
    kind: str = "default"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    truncate: bool = True

    def __post_init__(self):
        if not self.theta > 0:
            raise ValueError(f"RopeConfig.theta must be > 0, got {self.theta}")
        if self.kind not in ROPE_KINDS:
            raise ValueError(f"RopeConfig.kind must be one of {ROPE_KINDS}, got {self.kind!r}")
        if self.kind == "yarn":
            if not self.factor > 0:
                raise ValueError(f"RopeConfig.factor must be > 0 for yarn, got {self.factor}")
            if not (self.original_max_position_embeddings or 0) > 0:
                raise ValueError(
                    "RopeConfig.original_max_position_embeddings must be a positive int for yarn, "
                    f"got {self.original_max_position_embeddings}"
                )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Qwen3 or OLMo3 decoder. Field names follow transformers' config.json where one exists.

    Attributes:
      arch: "qwen3" (pre-norm blocks, RMSNorm of q/k per head over head_dim) or "olmo3" (norms
        after attention and MLP outputs, RMSNorm of q/k over the whole projection).
      vocab_size: rows of the embedding / output projection.
      hidden_size: model width D.
      intermediate_size: SwiGLU width F.
      num_layers: decoder blocks L (`num_hidden_layers`).
      num_heads: query heads H (`num_attention_heads`).
      num_kv_heads: key/value heads K; H must be a multiple of K (grouped-query attention).
      head_dim: per-head width.
      rope: rotary settings of full-attention layers (and of every layer unless `sliding_rope`).
      sliding_rope: rotary settings of sliding-window layers; None means the same as `rope`.
      rms_norm_eps: epsilon inside every RMSNorm.
      tie_word_embeddings: the output projection reuses the input embedding.
      layer_types: per layer "full_attention" or "sliding_attention"; None = all full.
      sliding_window: keys a sliding layer sees, the query included (transformers' semantics:
        query slot i attends key slot j iff i - window < j <= i).
      max_position_embeddings: recorded for export; positions beyond it are not rejected.
      bos_token_id, eos_token_id, pad_token_id: recorded for export only.
      initializer_range: std of the normal init of fresh weights (transformers' default 0.02).
      param_dtype: storage dtype of parameters, "float32" or "bfloat16".
      dtype: compute dtype of activations, "float32" or "bfloat16". Softmax, norms and the
        logits / values matmul accumulate in float32 either way; logits and values are float32.
      remat: recompute each layer's activations in the backward pass (jax.checkpoint per layer).
      attention: attention implementation of prefill and full forwards, one of
        `tempo_jax.models.attention.IMPLEMENTATIONS` (auto | dense | blockwise | splash | cudnn;
        auto picks by platform). Decode steps read the cache the same way whatever the choice.
      attention_block_size: keys per block of the blockwise implementation (its memory is
        O(T * attention_block_size) per row and head).
    """

    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope: RopeConfig
    sliding_rope: RopeConfig | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    layer_types: tuple[str, ...] | None = None
    sliding_window: int | None = None
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False
    attention: str = "auto"
    attention_block_size: int = 512

    def __post_init__(self):
        def fail(field: str, why: str):
            raise ValueError(f"ModelConfig.{field}: {why}")

        # Normalise convenient spellings so that equal configs compare (and hash) equal.
        for field in ("param_dtype", "dtype"):
            try:
                object.__setattr__(self, field, dtype_name(getattr(self, field)))
            except TypeError:
                fail(field, f"is not a dtype: {getattr(self, field)!r}")
        if isinstance(self.layer_types, list):
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

        if self.arch not in ARCHS:
            fail("arch", f"must be one of {ARCHS}, got {self.arch!r}")
        for field in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
            "attention_block_size",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                fail(field, f"must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            fail(
                "num_kv_heads",
                f"num_heads={self.num_heads} must be a multiple of "
                f"num_kv_heads={self.num_kv_heads}",
            )
        if self.head_dim % 2:
            fail("head_dim", f"must be even for rotary embeddings, got {self.head_dim}")
        if self.arch == "olmo3" and self.head_dim * self.num_heads != self.hidden_size:
            # transformers' Olmo3 has no head_dim field: it is always hidden_size // heads.
            fail(
                "head_dim",
                f"olmo3 requires head_dim * num_heads == hidden_size, got {self.head_dim} * "
                f"{self.num_heads} != {self.hidden_size}",
            )
        if not isinstance(self.rope, RopeConfig):
            fail("rope", f"must be a RopeConfig, got {type(self.rope).__name__}")
        if self.sliding_rope is not None and not isinstance(self.sliding_rope, RopeConfig):
            fail("sliding_rope", f"must be a RopeConfig or None, got {self.sliding_rope!r}")
        if not self.rms_norm_eps > 0:
            fail("rms_norm_eps", f"must be > 0, got {self.rms_norm_eps}")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_layers:
                fail(
                    "layer_types",
                    f"has {len(self.layer_types)} entries for num_layers={self.num_layers}",
                )
            for i, kind in enumerate(self.layer_types):
                if kind not in LAYER_TYPES:
                    fail("layer_types", f"entry {i} is {kind!r}, expected one of {LAYER_TYPES}")
        if self.has_sliding_layers:
            if not isinstance(self.sliding_window, int) or self.sliding_window <= 0:
                fail(
                    "sliding_window",
                    f"must be a positive int when a layer is sliding, got {self.sliding_window!r}",
                )
        for field in ("param_dtype", "dtype"):
            value = getattr(self, field)
            if value not in DTYPES:
                fail(field, f"must be one of {DTYPES}, got {value!r}")
        if self.attention not in IMPLEMENTATIONS:
            fail("attention", f"must be one of {IMPLEMENTATIONS}, got {self.attention!r}")
        if not self.initializer_range > 0:
            fail("initializer_range", f"must be > 0, got {self.initializer_range}")

    @property
    def resolved_layer_types(self) -> tuple[str, ...]:
        """Per-layer attention kind, "full_attention" everywhere when `layer_types` is None."""
        return self.layer_types or ("full_attention",) * self.num_layers

    @property
    def has_sliding_layers(self) -> bool:
        return "sliding_attention" in self.resolved_layer_types

    @property
    def resolved_sliding_rope(self) -> RopeConfig:
        return self.sliding_rope or self.rope

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads


# Qwen/Qwen3-* config.json: hidden, intermediate, layers, heads, tied embeddings (every one has
# vocab 151936 and 8 kv heads).
_QWEN3_SIZES = {
    "qwen3_0p6b": (1024, 3072, 28, 16, True),  # Qwen/Qwen3-0.6B
    "qwen3_1p7b": (2048, 6144, 28, 16, True),  # Qwen/Qwen3-1.7B
    "qwen3_4b": (2560, 9728, 36, 32, True),  # Qwen/Qwen3-4B
    "qwen3_8b": (4096, 12288, 36, 32, False),  # Qwen/Qwen3-8B
    "qwen3_14b": (5120, 17408, 40, 40, False),  # Qwen/Qwen3-14B
}


def _qwen3(hidden: int, intermediate: int, layers: int, heads: int, tied: bool) -> ModelConfig:
    # Shared by every Qwen3 dense checkpoint's config.json (Qwen/Qwen3-{0.6B,1.7B,4B,8B,14B}):
    # head_dim 128, rope_theta 1e6 (no rope_scaling), rms_norm_eps 1e-6, max_position_embeddings
    # 40960, use_sliding_window false, bos 151643 (<|endoftext|>), eos 151645 (<|im_end|>).
    return ModelConfig(
        arch="qwen3", vocab_size=151936, hidden_size=hidden, intermediate_size=intermediate,
        num_layers=layers, num_heads=heads, num_kv_heads=8, head_dim=128,
        rope=RopeConfig(theta=1_000_000.0), rms_norm_eps=1e-6, tie_word_embeddings=tied,
        max_position_embeddings=40960, bos_token_id=151643, eos_token_id=151645,
    )  # fmt: skip


_TINY = ModelConfig(
    arch="qwen3",
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    rope=RopeConfig(theta=10_000.0),
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    max_position_embeddings=2048,
)


def _olmo3_attention(layers: int, yarn_original: int, window: int) -> dict[str, Any]:
    # OLMo3's attention fields (allenai/Olmo-3-1025-7B config.json): layer_types 3 sliding + 1
    # full repeated, rope_theta 5e5 for both kinds, and rope_scaling {rope_type: yarn, factor 8,
    # attention_factor 1.2079441541679836, beta_fast 32, beta_slow 1 (RopeConfig's defaults)},
    # which transformers 5 applies to the full-attention layers only
    # (Olmo3Config.convert_rope_params_to_dict).
    full = RopeConfig(
        theta=500_000.0,
        kind="yarn",
        factor=8.0,
        original_max_position_embeddings=yarn_original,
        attention_factor=1.2079441541679836,
    )
    return dict(
        arch="olmo3",
        num_layers=layers,
        rope=full,
        sliding_rope=RopeConfig(theta=500_000.0),
        layer_types=tuple(
            "full_attention" if (i + 1) % 4 == 0 else "sliding_attention" for i in range(layers)
        ),
        sliding_window=window,
    )


# allenai/Olmo-3-1025-7B config.json (the Think / Instruct 7B variants share it): vocab 100278,
# hidden 4096, intermediate 11008, 32 layers, 32 heads and 32 kv heads (no GQA), head_dim 128
# (= 4096 / 32), rms_norm_eps 1e-6, untied, sliding_window 4096, YaRN
# original_max_position_embeddings 8192, max_position_embeddings 65536; eos 100257, pad 100277.
_OLMO3_7B = ModelConfig(
    vocab_size=100278, hidden_size=4096, intermediate_size=11008, num_heads=32, num_kv_heads=32,
    head_dim=128, rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=65536,
    eos_token_id=100257, pad_token_id=100277,
    **_olmo3_attention(32, yarn_original=8192, window=4096),
)  # fmt: skip

PRESETS: dict[str, ModelConfig] = {
    # Test model: 2 layers, D=64, V=512; compiles in about a second on CPU.
    "tiny": _TINY,
    # OLMo3-shaped test model: tiny's sizes in 4 layers of OLMo3's 3 sliding + 1 full pattern,
    # window 8, YaRN on the full layer as in OLMo3 7B.
    "tiny_olmo3": dataclasses.replace(_TINY, **_olmo3_attention(4, yarn_original=256, window=8)),
    **{name: _qwen3(*sizes) for name, sizes in _QWEN3_SIZES.items()},
    "olmo3_7b": _OLMO3_7B,
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """A preset by name, optionally with fields replaced (e.g. `dtype="bfloat16"`).

    Raises:
      KeyError: naming the known presets when `name` is not one.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
