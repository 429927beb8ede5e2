"""The data layer from a trainer config: tokenizer, dataset and streams in one call."""

import json

import ml_collections
import pytest

from tempo_jax.data import pipeline


def _config(**data_overrides):
    c = ml_collections.ConfigDict()
    c.seed = 3
    c.tokenizer = ml_collections.ConfigDict(
        {
            "kind": "sentencepiece",
            "path": "",
            "vocab_size": 320,
            "prompt_template": "{question}\n",
            "chat": False,
        }
    )
    c.data = ml_collections.ConfigDict(
        {
            "source": "builtin",
            "num_labeled": 12,
            "num_unlabeled": 10,
            "num_eval": 7,
            "max_prompt_length": 20,
            "overlong": "truncate",
            "prompts_per_step": 4,
            "labeled_fraction": 0.5,
        }
    )
    for k, v in data_overrides.items():
        c.data[k] = v
    return c


def test_builtin_task_from_config(tmp_path):
    cfg = _config(
        labeled_difficulty=ml_collections.ConfigDict({"min_steps": 1, "max_steps": 1}),
        unlabeled_difficulty={"operations": "+-*"},
    )
    dc = pipeline.data_config_from(cfg)
    assert (dc.task.num_labeled, dc.task.labeled.max_steps, dc.task.unlabeled.operations) == (
        12,
        1,
        "+-*",
    )
    assert (dc.stream.batch_size, dc.stream.seed, dc.prompt.kind) == (4, 3, "plain")
    data = pipeline.build_data(dc, tmp_path)
    assert data.splits() == ("eval", "labeled", "unlabeled")
    assert all(r.solution.count("\n") == 1 for r in data.all_rows("labeled"))  # one step
    batch = next(data.mixed_batches())
    assert batch.prompt_tokens.shape == (4, 20) and batch.is_labeled.tolist() == [
        True,
        True,
        False,
        False,
    ]
    tok = data.tokenizer
    first = batch.prompt_tokens[0][batch.prompt_mask[0] == 1].tolist()
    assert first[0] == tok.bos_id and tok.decode(first) == batch.questions[0] + "\n"
    # Evaluation: every eval row once, the remainder in a short last batch.
    seen = [b.row_ids for b in data.one_pass("eval", batch_size=3)]
    assert [len(ids) for ids in seen] == [3, 3, 1]
    assert sorted(i for ids in seen for i in ids) == sorted(f"eval/{i}" for i in range(7))
    assert all(not b.is_labeled.any() for b in data.one_pass("eval"))
    # SFT reads rows with solutions.
    row = next(data.rows("labeled", seed=1))
    assert row.solution.endswith(f"\\boxed{{{row.answers[0]}}}")


def test_local_files_from_config(tmp_path):
    lab = tmp_path / "train.jsonl"
    lab.write_text("\n".join(json.dumps({"problem": f"p{i}", "answer": i}) for i in range(5)))
    unl = tmp_path / "test.jsonl"
    unl.write_text("\n".join(json.dumps({"problem": f"u{i}", "answer": [i, -i]}) for i in range(3)))
    tok_path = tmp_path / "t.model"
    pipeline.load_tokenizer(
        pipeline.TokenizerConfig(num_problems=50), pipeline.ArithmeticTaskConfig()
    ).save(tok_path)
    cfg = _config(
        source="files",
        labeled_files=str(lab),
        unlabeled_files=f" {unl} ,",
        question_field="problem",
    )
    cfg.tokenizer.path = str(tok_path)
    data = pipeline.build_data(pipeline.data_config_from(cfg), tmp_path / "tfds")
    assert data.splits() == ("labeled", "unlabeled")
    b = next(data.unlabeled_batches())
    assert set(b.questions) <= {"u0", "u1", "u2"} and b.labeled_answers == (None,) * 4
    assert {a for a in b.evaluation_answers()} <= {("0", "0"), ("1", "-1"), ("2", "-2")}
    # Two D_U files with one base name (as AIME years often ship) keep distinct row ids.
    (tmp_path / "y2025").mkdir()
    unl2 = tmp_path / "y2025" / "test.jsonl"
    unl2.write_text(json.dumps({"problem": "v0", "answer": 1}))
    cfg.data.unlabeled_files = f"{unl},{unl2}"
    data = pipeline.build_data(pipeline.data_config_from(cfg), tmp_path / "tfds")
    ids = {r.row_id for r in data.all_rows("unlabeled")}
    assert ids == {f"{unl}:1", f"{unl}:2", f"{unl}:3", f"{unl2}:1"}


def test_per_split_field_names(tmp_path):
    # DAPO-Math-17k's layout as D_L (chat messages, nested ground truth), AIME's as D_U.
    lab = tmp_path / "dapo.jsonl"
    lab.write_text(
        "\n".join(
            json.dumps(
                {
                    "prompt": [{"role": "user", "content": f"q{i}"}],
                    "reward_model": {"ground_truth": str(i)},
                }
            )
            for i in range(4)
        )
    )
    unl = tmp_path / "aime.jsonl"
    unl.write_text("\n".join(json.dumps({"problem": f"a{i}", "answer": 7 * i}) for i in range(4)))
    cfg = _config(
        source="files",
        labeled_files=str(lab),
        unlabeled_files=str(unl),
        question_field="prompt",
        answer_field="reward_model.ground_truth",
        unlabeled_question_field="problem",
        unlabeled_answer_field="answer",
    )
    sources = {s.split: s for s in pipeline.data_config_from(cfg).files.sources}
    assert (sources["labeled"].question_field, sources["labeled"].answer_field) == (
        "prompt",
        "reward_model.ground_truth",
    )
    assert (sources["unlabeled"].question_field, sources["unlabeled"].answer_field) == (
        "problem",
        "answer",
    )
    tok_path = tmp_path / "t.model"
    pipeline.load_tokenizer(
        pipeline.TokenizerConfig(num_problems=50), pipeline.ArithmeticTaskConfig()
    ).save(tok_path)
    cfg.tokenizer.path = str(tok_path)
    data = pipeline.build_data(pipeline.data_config_from(cfg), tmp_path / "tfds")
    assert {(r.question, r.answers) for r in data.all_rows("labeled")} == {
        (f"q{i}", (str(i),)) for i in range(4)
    }
    assert {(r.question, r.answers) for r in data.all_rows("unlabeled")} == {
        (f"a{i}", (str(7 * i),)) for i in range(4)
    }


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"data.labeled_difficulty: unknown knobs \['steps'\]"):
        pipeline.data_config_from(_config(labeled_difficulty={"steps": 3}))
    with pytest.raises(ValueError, match="data.source='files' needs"):
        pipeline.data_config_from(_config(source="files"))
    with pytest.raises(ValueError, match="StreamConfig.overlong"):
        pipeline.data_config_from(_config(overlong="cut"))
    with pytest.raises(ValueError, match="kind='hf' needs a checkpoint directory"):
        pipeline.TokenizerConfig(kind="hf")


def test_package_exports_resolve_lazily():
    import subprocess
    import sys

    from tempo_jax import data

    for name in data.__all__:
        assert getattr(data, name).__module__.startswith("tempo_jax.data."), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        data.nope  # noqa: B018
    # The task generator stays light: no tfds / grain / flax import behind it.
    code = (
        "import sys, tempo_jax.data.arithmetic, tempo_jax.data.tokenizer; "
        "print(sorted(m for m in ('tensorflow_datasets', 'grain', 'flax') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.stdout.strip() == "[]", out.stderr
