"""`tempo-jax compile` on the suite's 8 fake CPU devices: the micro config with SFT and
evaluation on (every kind of function a run executes) fills every report field, and a tiny
--hbm_gib makes it exit 1 naming the function that does not fit."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tempo_jax.aot.compile_report import FunctionReport, _selected
from tempo_jax.tempo import functions

ROOT = pathlib.Path(__file__).resolve().parents[2]

MICRO = ROOT / "tests" / "tempo" / "tempo_micro.py"
OVERRIDES = ["--config.sft.steps=2", "--config.sft.batch_size=8", "--config.eval_every=2"]


def _compile(*flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(MICRO.parent), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "tempo_jax.cli", "compile", f"--config={MICRO}", *flags]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("compile") / "report.json"
    done = _compile("--topology=cpu", f"--out={out}", *OVERRIDES)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| policy_step/8x8 | M-step |" in done.stdout  # the table
    return json.loads(pathlib.Path(out).read_text())


def test_every_planned_function_is_compiled_and_every_field_filled(report):
    assert report["chips"] == 8 and report["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert report["chip"]["hbm_bytes"] > 0 and report["hbm_limit_fraction"] == 0.9
    assert report["attention"] == "blockwise"  # model.attention=auto on CPU devices
    names = [f["name"] for f in report["functions"]]
    assert names == [
        "sft_step/8",
        "sampler/4x2",
        "values/8x8",
        "critic_step/8x8",
        "token_stats/8x8",
        "policy_step/8x8",
        "sampler/8x1",
    ]  # eval n = rollout n = 2: one sampler; greedy pads its 4 prompts to 8 rows (8 devices)
    assert set(report["functions"][0]) == set(FunctionReport.__dataclass_fields__)
    for f in report["functions"]:
        assert f["status"] == "ok" and f["message"] == "", f
        for key in ("argument_bytes", "temp_bytes", "peak_bytes", "total_bytes", "state_bytes"):
            assert f[key] > 0, (f["name"], key)
        assert f["code_bytes"] >= 0  # XLA:CPU reports no device code size
        assert f["peak_bytes"] == (
            f["argument_bytes"]
            + f["output_bytes"]
            - f["alias_bytes"]
            + f["temp_bytes"]
            + f["code_bytes"]
        )
        assert f["total_bytes"] == f["peak_bytes"] + f["resident_bytes"]
        assert 0 < f["hbm_fraction"] < 0.9
        assert f["flops"] > 0 and f["roofline_s"] > 0 and f["compile_s"] > 0
    by_name = {f["name"]: f for f in report["functions"]}
    policy, critic = by_name["policy_step/8x8"], by_name["critic_step/8x8"]
    # The policy step donates its state: arguments and outputs alias it.
    assert policy["alias_bytes"] >= policy["state_bytes"] * 0.99
    # While the policy trains the critic's state stays resident, and vice versa.
    assert policy["resident_bytes"] == critic["state_bytes"]
    assert by_name["sampler/4x2"]["kv_cache_bytes"] > 0
    assert by_name["values/8x8"]["kv_cache_bytes"] == 0
    # A training step executes (3 + remat) forwards: more FLOPs than the log-prob forward.
    assert policy["flops"] > 3 * by_name["token_stats/8x8"]["flops"] * 0.9
    # Rollout seconds per step for each named distribution, never below the floor.
    rollout = report["rollout"]
    assert rollout["decode_layout"] == "replicated" and rollout["decode_tensor"] == 1
    for name in ("full", "aime"):
        floor = rollout["floor_seconds_per_step"][name]
        assert 0 < floor <= rollout["seconds_per_step"][name]
        assert rollout["static_seconds_per_step"][name] > 0


def test_only_rollout_selects_the_calls_rollouts_run():
    rollout = functions.Call(functions.SAMPLER, 8, prompts=4, samples=2, purpose="rollout")
    greedy = functions.Call(functions.SAMPLER, 8, prompts=8, samples=1, purpose="eval greedy")
    step = functions.Call(functions.POLICY_STEP, 8, 8, purpose="M-step")
    assert _selected(rollout, ("rollout",)) and not _selected(greedy, ("rollout",))
    assert _selected(step, ("policy_step",)) and _selected(greedy, ("sampler/8x1",))
    assert not _selected(step, ("rollout", "sampler"))


def test_a_function_that_does_not_fit_exits_1_naming_it(report):
    done = _compile("--topology=cpu", "--only=policy_step", "--hbm_gib=0.00001", *OVERRIDES)
    assert done.returncode == 1
    assert "does not fit: policy_step/8x8 (over: needs" in done.stderr
    assert "over 90% of 0 GiB" in done.stderr


def test_the_plan_names_each_phase_once():
    from tempo_micro import micro_config

    calls = functions.planned_calls(micro_config(**{"tempo.policy_trains_on_labeled": True}))
    keys = [c.key for c in calls]
    assert len(keys) == len(set(keys))
    # The M-step batch carries the E-step's labeled rows too: twice the rows.
    assert "policy_step/16x8" in keys and "token_stats/16x8" in keys and "values/16x8" in keys
    assert "critic_step/8x8" in keys


def test_critic_negatives_the_row_shards_do_not_divide_fail_naming_the_field():
    from tempo_micro import micro_config

    from tempo_jax import parallel
    from tempo_jax.config.settings import ConfigError, run_settings

    def for_run(**changes):
        config = micro_config(**changes)
        mesh = parallel.make_mesh(config.parallel.mesh)  # the 8 fake devices: 8 row shards
        rules = parallel.make_rules(config.parallel.rules)
        train_settings = run_settings(config).train
        return functions.RunFunctions.for_run(config, mesh, rules, train_settings, None)

    assert for_run(**{"tempo.critic_negatives": 8}).mesh.size == 8  # 8 + 8 rows
    with pytest.raises(ConfigError, match=r"config\.tempo\.critic_negatives = 4 .* 12 rows"):
        for_run(**{"tempo.critic_negatives": 4})
    # 16 rows in 4 micro-batches: 4 rows each cannot split over 8 shards (N = 8 rows could).
    with pytest.raises(ConfigError, match=r"critic_negatives = 8 .* over the 8 batch shards"):
        for_run(**{"tempo.critic_negatives": 8, "train.micro_batches": 4})


def test_the_kinds_table_has_a_row_for_every_planned_function_and_no_other():
    from tempo_micro import micro_config

    from tempo_jax.aot.function_kinds import KINDS

    planned = set()
    for engine in ("static", "paged"):
        config = micro_config(**{"sft.steps": 2, "eval_every": 2, "rollout.engine": engine})
        planned |= {call.function for call in functions.planned_calls(config)}
    assert planned == set(KINDS)


def test_the_plan_has_a_sampler_call_per_chunk_shape_and_a_training_call_per_bucket():
    from tempo_micro import micro_config

    changes = {
        "train.length_buckets": (2, 4),
        "rollout.max_rows_per_chunk": 4,
        "eval_every": 2,
        "eval.num_problems": 6,
    }
    calls = functions.planned_calls(micro_config(**changes), row_shards=2)
    keys = {c.key for c in calls}
    # Rollout (4 prompts x 2) and eval (6 x 2) in chunks of 2 prompts; greedy eval (6 x 1) in
    # chunks of 4 (whole chunks of 4 rows that divide over the 2 row shards).
    assert {k for k in keys if k.startswith("sampler/")} == {"sampler/2x2", "sampler/4x1"}
    for function in ("values", "critic_step", "token_stats", "policy_step"):
        assert {k for k in keys if k.startswith(function)} == {
            f"{function}/8x{length}" for length in (2, 4, 8)
        }


def test_only_rollout_compiles_the_paged_engine_with_its_pool_sized_from_memory(tmp_path):
    out = tmp_path / "paged.json"
    done = _compile(
        "--topology=cpu",
        "--only=rollout",
        "--config.rollout.engine=paged",
        "--hbm_gib=16",
        f"--out={out}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    functions_ = {f["name"]: f for f in report["functions"]}
    assert sorted(functions_) == ["engine_decode/4x2", "engine_prefill/4x2", "engine_refill/4x2"]
    decode = functions_["engine_decode/4x2"]
    # micro's 2 KV heads: decode_tensor 4 does not divide them, so 8 row shards of 1 slot.
    assert decode["status"] == "ok" and "decode mesh 8 rows x 1 tensor" in decode["shape"]
    assert "8 slots (1 a row shard), 16 steps a call" in decode["shape"]
    # rollout.paged.num_pages = 0: the pool takes what the 90% limit leaves (a 6 GiB workspace,
    # the prefill's tiny cache and the parameters aside); the compiled call holds it.
    limit = 0.9 * report["chip"]["hbm_bytes"]
    assert limit - 6.1 * 2**30 < decode["kv_cache_bytes"] < limit - 6 * 2**30
    assert decode["argument_bytes"] >= decode["kv_cache_bytes"]
    assert decode["hbm_fraction"] <= 0.9
    assert report["rollout"]["seconds_per_step"]["aime"] > 0


def test_decode_layout_is_validated_and_forced_layouts_are_reported():
    from tempo_jax.aot.rollout_estimates import rollout_section
    from tempo_jax.config import defaults
    from tempo_jax.config.validation import ConfigError, validate
    from tempo_jax.models import get_preset
    from tempo_jax.models import rollout_time as rt
    from tempo_jax.parallel.topology import GIB, TPU_CHIPS

    config = defaults.get_config()
    config.rollout.paged.decode_layout = "sideways"
    with pytest.raises(ConfigError, match="rollout.paged.decode_layout"):
        validate(config)
    # A small Qwen3-0.6B-shaped recipe on 8 v5p chips: both layouts are evaluated; forcing one
    # reports it, and the floor is the better layout's whatever is forced.
    config.data.prompts_per_step, config.rollout.n, config.rollout.max_new_tokens = 8, 4, 512
    recipe = rt.RolloutRecipe(
        get_preset("qwen3_0p6b", dtype="bfloat16"), TPU_CHIPS["TPU v5"], chips=8, rows=32,
        samples=4, max_new_tokens=512, max_prompt_length=64, weight_bytes=GIB,
        resident_bytes=GIB, static_chunk_rows=32, prompt_tokens=64,
    )  # fmt: skip
    sections = {}
    for layout in ("replicated", "tensor", "auto"):
        config.rollout.paged.decode_layout = layout
        sections[layout] = rollout_section(config, recipe, mesh_tensor=1)
    assert sections["replicated"]["decode_tensor"] == 1
    assert sections["tensor"]["decode_tensor"] == 4
    assert sections["tensor"]["decode_mesh"] == {"data": 2, "tensor": 4}
    assert sections["auto"]["decode_layout"] in ("replicated", "tensor")
    floors = {k: v["floor_seconds_per_step"]["full"] for k, v in sections.items()}
    assert floors["replicated"] == floors["tensor"] == floors["auto"]
