"""The `rollout` section of `tempo-jax compile`: seconds of one RL step's rollouts under the named
length distributions, for the paged engine and at the bandwidth floor, in both decode-weight
layouts (`tempo_jax.models.rollout_time`).

    recipe = rollout_recipe(config, model, chip, chips, mesh_tensor, weight_bytes, resident, ...)
    section = rollout_section(config, recipe, mesh_tensor)
    section["seconds_per_step"]["aime"], section["floor_seconds_per_step"]["aime"]

Layouts: "replicated" (every chip holds the whole decode weights and decodes its own rows) and
"tensor" (weights and KV heads split over `rollout.paged.decode_tensor` chips; 0 means
`parallel.mesh.tensor` when it is above 1, else `DEFAULT_DECODE_TENSOR`). Decode runs on its own
mesh, data = chips / tensor x tensor over the same chips (`decode_mesh` in the section): the
weights are re-laid out for rollouts anyway (the sampler gathers them from the training layout),
so the decode split need not be the training one. `rollout.paged.decode_layout` = auto picks the
layout whose engine estimate, summed over the distributions, is lowest (replicated or tensor force
one). The floor reported for a distribution is the lower of the two layouts' floors.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from tempo_jax.config import validation
from tempo_jax.models import ModelConfig
from tempo_jax.models import rollout_time as rt
from tempo_jax.parallel.topology import ChipSpec
from tempo_jax.sampling.engine_layout import DEFAULT_DECODE_TENSOR

LAYOUTS = validation.DECODE_LAYOUTS


def _paged(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`rollout.paged` with its defaults (the section may predate some fields)."""
    paged = dict(config.rollout.get("paged", None) or {})
    return {
        "page_size": int(paged.get("page_size", 16)),
        "steps_per_call": int(paged.get("steps_per_call", 16)),
        "num_slots": int(paged.get("num_slots", 0)),
        "decode_layout": str(paged.get("decode_layout", "auto")),
        "decode_tensor": int(paged.get("decode_tensor", 0)),
    }


def rollout_recipe(
    config: ml_collections.ConfigDict,
    model: ModelConfig,
    chip: ChipSpec,
    chips: int,
    mesh_tensor: int,
    weight_bytes: int,
    resident_bytes: int,
    static_chunk_rows: int,
    hbm_fraction: float,
) -> rt.RolloutRecipe:
    """The rollout recipe of a run of `config` on `chips` chips."""
    paged = _paged(config)
    return rt.RolloutRecipe(
        model=model,
        chip=chip,
        chips=chips,
        rows=config.data.prompts_per_step * config.rollout.n,
        samples=config.rollout.n,
        max_new_tokens=config.rollout.max_new_tokens,
        max_prompt_length=config.data.max_prompt_length,
        weight_bytes=weight_bytes,
        resident_bytes=resident_bytes,
        static_chunk_rows=static_chunk_rows,
        static_tensor=mesh_tensor,
        prompt_tokens=min(rt.PROMPT_TOKENS, config.data.max_prompt_length),
        page_size=paged["page_size"],
        steps_per_call=paged["steps_per_call"],
        num_slots=paged["num_slots"],
        hbm_fraction=hbm_fraction,
    )


def _layout(recipe: rt.RolloutRecipe, split: int) -> dict[str, Any]:
    """One decode layout's floor and engine estimate per distribution."""
    per: dict[str, Any] = {"tensor": split}
    for dist in rt.DISTRIBUTIONS.values():
        floor = rt.floor_seconds(recipe, dist, split)
        engine = rt.engine_seconds(recipe, dist, split)
        per[dist.name] = {
            "floor_seconds": floor.seconds,
            "floor_slots": floor.slots,
            "seconds": engine.seconds,
            "slots": engine.slots,
            "steps": engine.steps,
            "wasted_fraction": engine.wasted_fraction,
            "preemptions": engine.preemptions,
            "kv_budget_bytes": engine.kv_budget_bytes,
            # Admission by worst-case reservation (no preemption), sampling.Engine's before.
            "reserving_seconds": rt.engine_seconds(recipe, dist, split, preempt=False).seconds,
            # sampling.Engine's preemption: a preempted row decodes its tokens again.
            "restart_seconds": rt.engine_seconds(recipe, dist, split, restart=True).seconds,
        }
    return per


def rollout_section(
    config: ml_collections.ConfigDict, recipe: rt.RolloutRecipe, mesh_tensor: int
) -> dict[str, Any]:
    """The report's `rollout` JSON: per distribution the engine's and the floor's seconds per
    step (chosen layout / best layout), today's static sampler's, and each layout's details.

    Raises:
      ValueError: for an unknown `rollout.paged.decode_layout`.
    """
    paged = _paged(config)
    setting = paged["decode_layout"]
    if setting not in LAYOUTS:
        raise ValueError(f"rollout.paged.decode_layout={setting!r}; expected one of {LAYOUTS}")
    tensor = paged["decode_tensor"] or (mesh_tensor if mesh_tensor > 1 else DEFAULT_DECODE_TENSOR)
    splits = {"replicated": 1}
    if tensor in rt.tensor_options(recipe, tensor):
        splits["tensor"] = tensor
    layouts: dict[str, Any] = {}
    for name, split in splits.items():
        try:
            layouts[name] = _layout(recipe, split)
        except ValueError as e:  # no row fits this layout's KV budget
            layouts[name] = {"tensor": split, "error": str(e)}
    runnable = [n for n, v in layouts.items() if "error" not in v]
    if not runnable:
        return {"decode_layout_setting": setting, "error": layouts["replicated"]["error"]}
    if setting == "auto":
        chosen = min(
            runnable, key=lambda n: sum(layouts[n][d]["seconds"] for d in rt.DISTRIBUTIONS)
        )
    elif setting in runnable:
        chosen = setting
    else:
        raise ValueError(
            f"rollout.paged.decode_layout={setting} needs a decode tensor split above 1 dividing "
            "the chips and the KV heads, and a KV budget"
        )
    names = rt.DISTRIBUTIONS
    return {
        "decode_layout_setting": setting,
        "decode_layout": chosen,
        "decode_tensor": layouts[chosen]["tensor"],
        "decode_mesh": {
            "data": recipe.chips // layouts[chosen]["tensor"],
            "tensor": layouts[chosen]["tensor"],
        },
        "prompt_tokens": recipe.prompt_tokens,
        "seconds_per_step": {d: layouts[chosen][d]["seconds"] for d in names},
        "floor_seconds_per_step": {
            d: min(v[d]["floor_seconds"] for v in layouts.values() if "error" not in v)
            for d in names
        },
        "static_seconds_per_step": {
            d: rt.static_seconds(recipe, dist).seconds for d, dist in names.items()
        },
        "layouts": layouts,
    }
