"""The `train` config section (optimizers, losses, micro-batches, dtypes, remat) and its validation.

`get_config()` gives the ml_collections section with defaults from the authors' runs
(TEMPO_ALGORITHM.md §4: AdamW lr 1e-6 for both, weight decay 0 for the policy and 0.01 for the
critic, global-norm clip 1.0, value clip 0.1). `settings_from_config` validates it into frozen,
hashable dataclasses that the step builders close over; every error names the offending field,
and all of this runs before anything is traced or compiled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from tempo_jax.rl.registry import POLICY_LOSSES

SCHEDULES = ("constant", "warmup")
COMPUTE_DTYPES = ("", "float32", "bfloat16")
# How each policy loss aggregates tokens; gradient accumulation needs it to weight micro-batches.
LOSS_AGGREGATION: dict[str, str] = {"gspo": "seq_mean_token_mean", "ppo": "token_mean"}


def _optimizer_config(weight_decay: float) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.learning_rate = 1e-6  # AdamW peak learning rate (0 = frozen: the update is a no-op)
    cfg.schedule = "constant"  # constant | warmup (linear from 0 over warmup_steps, then constant)
    cfg.warmup_steps = 0  # optimizer updates of linear warm-up (schedule = warmup)
    cfg.b1 = 0.9  # AdamW first-moment decay
    cfg.b2 = 0.999  # AdamW second-moment decay
    cfg.eps = 1e-8  # AdamW denominator epsilon
    cfg.weight_decay = weight_decay  # AdamW decoupled weight decay, applied to every parameter
    cfg.max_grad_norm = 1.0  # global-norm gradient clip (0 = no clipping)
    return cfg


def get_config() -> ml_collections.ConfigDict:
    """Defaults for `config.train`; every field is overridable from the command line."""
    cfg = ml_collections.ConfigDict()
    cfg.policy_optimizer = _optimizer_config(weight_decay=0.0)  # actor AdamW (authors: wd 0)
    cfg.critic_optimizer = _optimizer_config(weight_decay=0.01)  # critic AdamW (authors: wd 0.01)
    cfg.policy_loss = ml_collections.ConfigDict()  # which tempo_jax.rl policy loss, its clips
    cfg.policy_loss.name = "gspo"  # gspo (sequence ratio, default) | ppo (token ratio)
    # Ratio clip range; unset = the loss's own default (gspo 3e-4 / 5e-4, ppo 0.2 / 0.2).
    cfg.policy_loss.clip_low = config_dict.placeholder(float)  # clip below 1 (1 - clip_low)
    cfg.policy_loss.clip_high = config_dict.placeholder(float)  # clip above 1 (1 + clip_high)
    cfg.policy_loss.dual_clip = config_dict.placeholder(float)  # ppo only: dual-clip c > 1
    cfg.value_clip = 0.1  # critic: bound on each row's mean value change per update
    # critic: V(x, y_<t) = value head + w x the lowest log-prob the critic's own language model
    # (its tied embedding as output projection) gives a response token before t
    # (tempo_jax.train.forward.response_values).
    cfg.critic_likelihood_weight = 0.0  # w (0 = the value head alone, the authors' critic)
    cfg.micro_batches = 1  # gradient accumulation: rows are split into this many micro-batches
    # Memory per device then stays the same for the policy update, the critic's whole step batch
    # and the log-prob / value forwards; a multiple of the batch's mesh shards.
    cfg.micro_batch_rows = 0  # rows per micro-batch of every step / forward (0 = micro_batches)
    cfg.vocab_chunk_size = 8192  # log-probs: at most this many vocabulary rows per chunk
    cfg.compute_dtype = ""  # '' = the model's | float32 | bfloat16 (params stay as stored)
    cfg.remat = False  # recompute each decoder layer in the backward pass (saves activations)
    # The update, log-prob and value passes run on the smallest of these response lengths that
    # holds the batch's longest response, else at rollout.max_new_tokens.
    cfg.length_buckets = ()  # response-length buckets (() = always the full length)
    return cfg


def _fail(field: str, why: str) -> None:
    raise ValueError(f"train.{field} {why}")


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(field, f"must be a number, got {value!r}")
    return float(value)


def _integer(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field, f"must be an int, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """Validated AdamW + schedule + clipping settings (see `get_config` for each field)."""

    learning_rate: float = 1e-6
    schedule: str = "constant"
    warmup_steps: int = 0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    where: str = "optimizer"  # the config path, for error messages

    def __post_init__(self):
        w = self.where
        if not _number(f"{w}.learning_rate", self.learning_rate) >= 0:
            _fail(f"{w}.learning_rate", f"must be >= 0, got {self.learning_rate}")
        if self.schedule not in SCHEDULES:
            _fail(f"{w}.schedule", f"must be one of {SCHEDULES}, got {self.schedule!r}")
        steps = _integer(f"{w}.warmup_steps", self.warmup_steps)
        if steps < 0:
            _fail(f"{w}.warmup_steps", f"must be >= 0, got {steps}")
        if self.schedule == "warmup" and steps == 0:
            _fail(f"{w}.warmup_steps", "must be > 0 when schedule = 'warmup'")
        for name in ("b1", "b2"):
            value = _number(f"{w}.{name}", getattr(self, name))
            if not 0 <= value < 1:
                _fail(f"{w}.{name}", f"must be in [0, 1), got {value}")
        if not _number(f"{w}.eps", self.eps) > 0:
            _fail(f"{w}.eps", f"must be > 0, got {self.eps}")
        if not _number(f"{w}.weight_decay", self.weight_decay) >= 0:
            _fail(f"{w}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        if not _number(f"{w}.max_grad_norm", self.max_grad_norm) >= 0:
            _fail(f"{w}.max_grad_norm", f"must be >= 0 (0 = no clipping), got {self.max_grad_norm}")


@dataclasses.dataclass(frozen=True)
class PolicyLossSettings:
    """Which `tempo_jax.rl` policy loss and its clip options (None = the loss's default)."""

    name: str = "gspo"
    clip_low: float | None = None
    clip_high: float | None = None
    dual_clip: float | None = None

    def __post_init__(self):
        if self.name not in POLICY_LOSSES.names() or self.name not in LOSS_AGGREGATION:
            known = sorted(set(POLICY_LOSSES.names()) & set(LOSS_AGGREGATION))
            _fail("policy_loss.name", f"must be one of {known}, got {self.name!r}")
        for field in ("clip_low", "clip_high"):
            value = getattr(self, field)
            if value is not None and not _number(f"policy_loss.{field}", value) >= 0:
                _fail(f"policy_loss.{field}", f"must be >= 0, got {value}")
        if self.dual_clip is not None:
            if self.name != "ppo":
                _fail("policy_loss.dual_clip", f"applies only to ppo, not {self.name!r}")
            if not _number("policy_loss.dual_clip", self.dual_clip) > 1:
                _fail("policy_loss.dual_clip", f"must be > 1, got {self.dual_clip}")

    @property
    def aggregation(self) -> str:
        """'seq_mean_token_mean' or 'token_mean'."""
        return LOSS_AGGREGATION[self.name]

    def options(self) -> dict[str, float]:
        """Keyword options for the registered loss function (defaults left to the function)."""
        out = {}
        for field in ("clip_low", "clip_high", "dual_clip"):
            if getattr(self, field) is not None:
                out[field] = float(getattr(self, field))
        return out


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Everything the step functions close over (hashable, so it can key caches)."""

    policy_optimizer: OptimizerSettings = OptimizerSettings(where="policy_optimizer")
    critic_optimizer: OptimizerSettings = OptimizerSettings(
        weight_decay=0.01, where="critic_optimizer"
    )
    policy_loss: PolicyLossSettings = PolicyLossSettings()
    value_clip: float = 0.1
    critic_likelihood_weight: float = 0.0
    micro_batches: int = 1
    micro_batch_rows: int = 0
    vocab_chunk_size: int = 8192
    compute_dtype: str = ""
    remat: bool = False
    length_buckets: tuple[int, ...] = ()

    def __post_init__(self):
        if not _number("value_clip", self.value_clip) > 0:
            _fail("value_clip", f"must be > 0, got {self.value_clip}")
        if not _number("critic_likelihood_weight", self.critic_likelihood_weight) >= 0:
            _fail("critic_likelihood_weight", f"must be >= 0, got {self.critic_likelihood_weight}")
        if _integer("micro_batches", self.micro_batches) < 1:
            _fail("micro_batches", f"must be >= 1, got {self.micro_batches}")
        if _integer("micro_batch_rows", self.micro_batch_rows) < 0:
            _fail(
                "micro_batch_rows", f"must be >= 0 (0 = micro_batches), got {self.micro_batch_rows}"
            )
        if _integer("vocab_chunk_size", self.vocab_chunk_size) < 1:
            _fail("vocab_chunk_size", f"must be >= 1, got {self.vocab_chunk_size}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            _fail("compute_dtype", f"must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        if not isinstance(self.remat, bool):
            _fail("remat", f"must be a bool, got {self.remat!r}")
        buckets = tuple(self.length_buckets)
        for b in buckets:
            if _integer("length_buckets", b) < 1:
                _fail("length_buckets", f"must be positive ints, got {buckets}")
        object.__setattr__(self, "length_buckets", tuple(sorted(set(buckets))))


def micro_batches_for(settings: TrainSettings, rows: int) -> int:
    """Micro-batches a batch of `rows` rows is split into: rows / micro_batch_rows when that is
    set, else micro_batches.

    Raises:
      ValueError: naming train.micro_batch_rows when it does not divide `rows`.
    """
    if not settings.micro_batch_rows:
        return settings.micro_batches
    if rows % settings.micro_batch_rows:
        _fail(
            "micro_batch_rows",
            f"= {settings.micro_batch_rows} does not divide a batch of {rows} rows",
        )
    return rows // settings.micro_batch_rows


def _as_dict(section: Any) -> dict[str, Any]:
    if hasattr(section, "to_dict"):
        return section.to_dict()
    if isinstance(section, Mapping):
        return dict(section)
    raise ValueError(f"expected a config section (ConfigDict / mapping), got {section!r}")


def _known_fields(where: str, given: Mapping[str, Any], cls: type) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(cls)} - {"where"}
    unknown = sorted(set(given) - fields)
    if unknown:
        _fail(where or "<root>", f"has unknown fields {unknown}; known: {sorted(fields)}")
    return dict(given)


def settings_from_config(config: Any = None) -> TrainSettings:
    """Validates a `train` config section (ConfigDict or nested mapping) into `TrainSettings`.

    Missing fields take `get_config()`'s defaults. Raises ValueError naming the field
    (`train.policy_optimizer.learning_rate must be >= 0, got -1.0`).
    """
    merged = get_config().to_dict()
    given = {} if config is None else _as_dict(config)
    _known_fields("", given, TrainSettings)
    for key, value in given.items():
        if isinstance(merged.get(key), dict):
            section = _as_dict(value)
            merged[key].update(section)
        else:
            merged[key] = value
    policy_opt = _known_fields(
        "policy_optimizer", merged.pop("policy_optimizer"), OptimizerSettings
    )
    critic_opt = _known_fields(
        "critic_optimizer", merged.pop("critic_optimizer"), OptimizerSettings
    )
    loss = _known_fields("policy_loss", merged.pop("policy_loss"), PolicyLossSettings)
    return TrainSettings(
        policy_optimizer=OptimizerSettings(**policy_opt, where="policy_optimizer"),
        critic_optimizer=OptimizerSettings(**critic_opt, where="critic_optimizer"),
        policy_loss=PolicyLossSettings(**loss),
        **merged,
    )
