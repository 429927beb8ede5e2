"""Mapping between transformers' config.json (Qwen3 / OLMo3) and `ModelConfig`.

Reads both spellings of the rotary settings: transformers 4.x (`rope_theta` + `rope_scaling`,
what the published checkpoints ship) and transformers 5.x (`rope_parameters`, flat for Qwen3,
nested per layer type for OLMo3). Writes the 4.x spelling, which 4.x loads as is and 5.x converts
on load, so exported directories work with either.

Roles: a policy is `<Arch>ForCausalLM`; a critic is `<Arch>ForTokenClassification` with one label
(a `score` head of shape [1, D] plus bias), the layout the TEMPO authors' critic uses.
transformers has `Qwen3ForTokenClassification` but (as of 5.24) no OLMo3 counterpart: an OLMo3
critic directory round-trips through `load_hf` / `save_hf` but transformers cannot load it.
"""

from __future__ import annotations

import math
from typing import Any

from tempo_jax.models.config import ModelConfig, RopeConfig
from tempo_jax.models.errors import CheckpointError

ARCHITECTURES = {
    ("qwen3", "policy"): "Qwen3ForCausalLM",
    ("qwen3", "critic"): "Qwen3ForTokenClassification",
    ("olmo3", "policy"): "Olmo3ForCausalLM",
    ("olmo3", "critic"): "Olmo3ForTokenClassification",
}
ROLES = ("policy", "critic")

# transformers' defaults for fields a config.json may omit (Qwen3Config / Olmo3Config).
_DEFAULTS = {
    "qwen3": {"rope_theta": 10_000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768},
    "olmo3": {"rope_theta": 500_000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 2048},
}


def _rope_from_dict(params: dict[str, Any], theta: float, source: str, field: str) -> RopeConfig:
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", "yarn"):
        raise CheckpointError(
            source, f"{field}: rope_type {kind!r} is not supported (only 'default' and 'yarn')"
        )
    theta = float(params.get("rope_theta", theta))
    if kind == "default":
        return RopeConfig(theta=theta)
    if params.get("mscale") or params.get("mscale_all_dim"):
        raise CheckpointError(source, f"{field}: yarn mscale / mscale_all_dim are not supported")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise CheckpointError(source, f"{field}: partial_rotary_factor is not supported")
    try:
        return RopeConfig(
            theta=theta,
            kind="yarn",
            factor=float(params["factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
            beta_fast=float(params.get("beta_fast") or 32.0),
            beta_slow=float(params.get("beta_slow") or 1.0),
            attention_factor=(
                None
                if params.get("attention_factor") is None
                else float(params["attention_factor"])
            ),
            truncate=bool(params.get("truncate", True)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(source, f"{field}: invalid yarn parameters {params}: {e}") from e


def _ropes(d: dict[str, Any], arch: str, source: str) -> tuple[RopeConfig, RopeConfig | None]:
    """(rope of full-attention layers, rope of sliding layers or None) from a config dict."""
    theta = float(d.get("rope_theta", _DEFAULTS[arch]["rope_theta"]))
    params = d.get("rope_parameters")
    scaling = d.get("rope_scaling")
    if isinstance(params, dict) and ("full_attention" in params or "sliding_attention" in params):
        full = _rope_from_dict(params.get("full_attention") or {}, theta, source, "rope_parameters")
        sliding = _rope_from_dict(
            params.get("sliding_attention") or {}, theta, source, "rope_parameters"
        )
        return full, sliding
    flat = dict(params or {})
    if scaling:
        flat.update(scaling)
    rope = _rope_from_dict(flat, theta, source, "rope_scaling")
    if arch == "olmo3":
        # Olmo3Config applies rope_scaling to full-attention layers only.
        return rope, RopeConfig(theta=float(flat.get("rope_theta", theta)))
    return rope, None


def _int(d: dict[str, Any], key: str, source: str, default: Any = None) -> int:
    value = d.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise CheckpointError(source, f"field {key!r} must be an int, got {value!r}")
    return value


def config_from_hf(
    d: dict[str, Any], *, role: str, source: str, param_dtype: str, dtype: str
) -> tuple[ModelConfig, dict[str, Any]]:
    """ModelConfig from a parsed config.json, checked against the role.

    Args:
      d: the parsed config.json.
      role: "policy" or "critic".
      source: the config.json path, for error messages.
      param_dtype, dtype: the dtypes of the built model.

    Returns:
      (config, extras) where extras["score_bias"] says whether a critic has a `score.bias`.

    Raises:
      CheckpointError: naming `source` and the field for an unknown architecture, a role
        mismatch or an unsupported setting.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    arch = d.get("model_type")
    if arch not in ("qwen3", "olmo3"):
        raise CheckpointError(
            source, f"unknown architecture: model_type {arch!r} (supported: 'qwen3', 'olmo3')"
        )
    wanted = ARCHITECTURES[(arch, role)]
    architectures = d.get("architectures") or []
    if architectures and wanted not in architectures:
        hint = ""
        if role == "critic" and ARCHITECTURES[(arch, "policy")] in architectures:
            hint = (
                "; to start a critic from a policy checkpoint use critic_from_policy(load_hf(...))"
            )
        raise CheckpointError(
            source,
            f"architectures {architectures} do not match role {role!r} (expected {wanted!r})"
            + hint,
        )
    if role == "critic":
        labels = (
            len(d["id2label"]) if isinstance(d.get("id2label"), dict) else d.get("num_labels", 1)
        )
        if labels != 1:
            raise CheckpointError(source, f"a critic needs exactly one label, got {labels}")
    if d.get("attention_bias", False):
        raise CheckpointError(source, "field 'attention_bias': biased attention is not supported")
    if d.get("hidden_act", "silu") != "silu":
        raise CheckpointError(source, f"field 'hidden_act': {d['hidden_act']!r} is not supported")

    hidden = _int(d, "hidden_size", source)
    heads = _int(d, "num_attention_heads", source)
    kv_heads = d.get("num_key_value_heads") or heads
    head_dim = d.get("head_dim") if arch == "qwen3" else None
    head_dim = head_dim or hidden // heads
    layers = _int(d, "num_hidden_layers", source)
    rope, sliding_rope = _ropes(d, arch, source)

    layer_types = d.get("layer_types")
    window = d.get("sliding_window")
    if arch == "qwen3":
        if d.get("use_sliding_window", False) and window is not None:
            layer_types = layer_types or [
                "sliding_attention" if i >= d.get("max_window_layers", 28) else "full_attention"
                for i in range(layers)
            ]
        else:
            # Qwen3Config drops the window unless use_sliding_window: every layer is full.
            layer_types, window = None, None
    else:
        window = d.get("sliding_window", 4096)
        layer_types = layer_types or [
            "sliding_attention" if (i + 1) % 4 else "full_attention" for i in range(layers)
        ]
    if layer_types is not None and "sliding_attention" not in layer_types:
        layer_types = None
    eos = d.get("eos_token_id")
    try:
        config = ModelConfig(
            arch=arch,
            vocab_size=_int(d, "vocab_size", source),
            hidden_size=hidden,
            intermediate_size=_int(d, "intermediate_size", source),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rope=rope,
            sliding_rope=None if sliding_rope == rope else sliding_rope,
            rms_norm_eps=float(d.get("rms_norm_eps", _DEFAULTS[arch]["rms_norm_eps"])),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            layer_types=None if layer_types is None else tuple(layer_types),
            sliding_window=window if layer_types is not None else None,
            max_position_embeddings=int(
                d.get("max_position_embeddings", _DEFAULTS[arch]["max_position_embeddings"])
            ),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=d.get("pad_token_id"),
            initializer_range=float(d.get("initializer_range", 0.02)),
            param_dtype=param_dtype,
            dtype=dtype,
        )
    except ValueError as e:
        raise CheckpointError(source, f"invalid model config: {e}") from e
    extras = {"score_bias": bool(d.get("token_classification_bias", True))}
    return config, extras


def _rope_to_dict(rope: RopeConfig) -> dict[str, Any] | None:
    if rope.kind == "default":
        return None
    out: dict[str, Any] = {
        "rope_type": "yarn",
        "factor": rope.factor,
        "original_max_position_embeddings": rope.original_max_position_embeddings,
        "beta_fast": rope.beta_fast,
        "beta_slow": rope.beta_slow,
    }
    if rope.attention_factor is not None:
        out["attention_factor"] = rope.attention_factor
    if not rope.truncate:
        out["truncate"] = False
    return out


def config_to_hf(config: ModelConfig, role: str, *, target: str = "config.json") -> dict[str, Any]:
    """The config.json dict transformers needs to rebuild `config` in `role`.

    Raises:
      CheckpointError: naming `target` when the rotary settings cannot be written in the
        portable spelling.
    """
    c = config
    sliding_rope = c.resolved_sliding_rope
    if c.arch == "olmo3" and (
        sliding_rope.kind != "default" or not math.isclose(sliding_rope.theta, c.rope.theta)
    ):
        raise CheckpointError(
            target,
            "OLMo3 export needs default rope on sliding layers with the full layers' theta",
        )
    if c.arch == "qwen3" and c.sliding_rope is not None and c.sliding_rope != c.rope:
        raise CheckpointError(target, "Qwen3 has one rope for all layers")
    d: dict[str, Any] = {
        "architectures": [ARCHITECTURES[(c.arch, role)]],
        "model_type": c.arch,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope.theta,
        "rope_scaling": _rope_to_dict(c.rope),
        "tie_word_embeddings": c.tie_word_embeddings,
        "initializer_range": c.initializer_range,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": list(c.eos_token_id)
        if isinstance(c.eos_token_id, tuple)
        else c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        "use_cache": True,
        "dtype": c.param_dtype,
    }
    if c.arch == "qwen3":
        d["head_dim"] = c.head_dim
        d["use_sliding_window"] = c.has_sliding_layers
        d["sliding_window"] = c.sliding_window if c.has_sliding_layers else None
        d["max_window_layers"] = c.num_layers
    else:
        d["sliding_window"] = c.sliding_window if c.has_sliding_layers else 4096
    d["layer_types"] = list(c.resolved_layer_types)
    if role == "critic":
        d["num_labels"] = 1
        d["id2label"] = {"0": "LABEL_0"}
        d["label2id"] = {"LABEL_0": 0}
    return d
