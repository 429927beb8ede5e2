"""tfds builders, offline in tmp_path: the built-in task and local JSONL / Parquet files, with bad
rows skipped and counted (or raising in strict mode)."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tempo_jax.data import arithmetic, builders, records
from tempo_jax.data.local_files import LocalFilesConfig, LocalSource, read_source
from tempo_jax.data.row_validation import DataError, RowLimits


def _all_rows(dataset_dir, split):
    source = builders.open_split(dataset_dir, split)
    return [records.from_record(source[i]) for i in range(len(source))]


def test_task_builds_offline_with_every_row_reproducible(small_task, small_task_dir):
    assert str(small_task_dir).endswith("1.0.0")
    assert builders.split_names(small_task_dir) == ("eval", "labeled", "unlabeled")
    files = os.listdir(small_task_dir)
    assert any(f.startswith("tempo_arithmetic-labeled.array_record") for f in files)
    for split in arithmetic.SPLITS:
        rows = _all_rows(small_task_dir, split)
        assert len(rows) == small_task.size(split)
        assert sorted(r.row_id for r in rows) == sorted(
            f"{split}/{i}" for i in range(small_task.size(split))
        )
        for row in rows:
            problem = arithmetic.problem_at(small_task, split, int(row.row_id.split("/")[1]))
            assert (row.question, row.answers, row.solution) == (
                problem.question,
                (problem.answer,),
                problem.solution,
            )
            assert row.is_labeled == (split == "labeled")
    # The default tfds directory is never touched; a rebuild reuses; other knobs build afresh.
    assert not os.path.exists(os.environ["TFDS_DATA_DIR"])
    data_dir = os.path.dirname(os.path.dirname(os.path.dirname(small_task_dir)))
    mtime = os.path.getmtime(os.path.join(small_task_dir, "dataset_info.json"))
    assert builders.prepare_arithmetic(small_task, data_dir) == small_task_dir
    assert os.path.getmtime(os.path.join(small_task_dir, "dataset_info.json")) == mtime
    other = arithmetic.ArithmeticTaskConfig(seed=5, num_labeled=11, num_unlabeled=24, num_eval=6)
    other_dir = builders.prepare_arithmetic(other, data_dir)
    assert other_dir != small_task_dir and len(builders.open_split(other_dir, "labeled")) == 11
    with pytest.raises(ValueError, match="no split 'train'.*'eval', 'labeled', 'unlabeled'"):
        builders.open_split(small_task_dir, "train")


def _write_jsonl(path, rows):
    with open(path, "wb") as f:
        for row in rows:
            f.write(row if isinstance(row, bytes) else json.dumps(row).encode("utf-8"))
            f.write(b"\n")
    return str(path)


def test_local_files_jsonl_and_parquet_with_configured_fields(tmp_path):
    # AIME-style JSONL: problem / answer (an int), D_U.
    aime = _write_jsonl(
        tmp_path / "aime24.jsonl",
        [
            {"id": 1, "problem": "Find $x$ if $x+1=3$.", "answer": 2},
            {"id": 2, "problem": "Compute \\frac{1}{2}+\\frac{1}{3}.", "answer": "\\frac{5}{6}"},
        ],
    )
    # DAPO-style Parquet (original layout): chat-message prompt, nested ground truth, D_L.
    dapo = str(tmp_path / "dapo.parquet")
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "prompt": [{"role": "user", "content": "What is 6*7?"}],
                    "reward_model": {"ground_truth": "42", "style": "rule"},
                },
                {
                    "prompt": [
                        {"role": "system", "content": "sys"},
                        {"role": "user", "content": "2^10?"},
                    ],
                    "reward_model": {"ground_truth": "1024", "style": "rule"},
                },
            ]
        ),
        dapo,
    )
    # DAPO processed layout: prompt / solution strings; answers as a list.
    processed = str(tmp_path / "dapo_processed.parquet")
    pq.write_table(
        pa.Table.from_pylist(
            [
                {"prompt": "How many primes below 10?", "solution": ["4", "four"]},
            ]
        ),
        processed,
    )
    # A .json file holding one array (AIME as some downloads ship it).
    aime25 = tmp_path / "aime25.json"
    aime25.write_text(json.dumps([{"problem": "Find y.", "answer": "7"}, {"problem": None}]))
    # One mixed file routed by its flag, with a worked solution.
    mixed = _write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"q": "1+1?", "a": "2", "lab": True, "sol": "1+1=2 \\boxed{2}"},
            {"q": "2+2?", "a": "4", "lab": 0, "sol": "2+2=4 \\boxed{4}"},
        ],
    )
    files = LocalFilesConfig(
        sources=(
            LocalSource(aime, split="unlabeled", question_field="problem", answer_field="answer"),
            LocalSource(
                dapo,
                split="labeled",
                question_field="prompt",
                answer_field="reward_model.ground_truth",
            ),
            LocalSource(
                processed, split="labeled", question_field="prompt", answer_field="solution"
            ),
            LocalSource(str(aime25), split="unlabeled", question_field="problem"),
            LocalSource(
                mixed,
                question_field="q",
                answer_field="a",
                is_labeled_field="lab",
                solution_field="sol",
            ),
        )
    )
    dataset_dir = builders.prepare_local_files(files, tmp_path / "tfds")
    assert builders.split_names(dataset_dir) == ("labeled", "unlabeled")
    labeled = {r.row_id: r for r in _all_rows(dataset_dir, "labeled")}
    unlabeled = {r.row_id: r for r in _all_rows(dataset_dir, "unlabeled")}
    assert set(labeled) == {
        "dapo.parquet:1",
        "dapo.parquet:2",
        "dapo_processed.parquet:1",
        "mixed.jsonl:1",
    }
    assert set(unlabeled) == {"aime24.jsonl:1", "aime24.jsonl:2", "aime25.json:1", "mixed.jsonl:2"}
    assert labeled["dapo.parquet:2"].question == "2^10?"
    assert labeled["dapo.parquet:2"].answers == ("1024",)
    assert labeled["dapo_processed.parquet:1"].answers == ("4", "four")
    assert labeled["mixed.jsonl:1"].solution == "1+1=2 \\boxed{2}"
    assert unlabeled["aime24.jsonl:1"].answers == ("2",)
    assert unlabeled["aime24.jsonl:2"].question == "Compute \\frac{1}{2}+\\frac{1}{3}."
    assert all(r.is_labeled for r in labeled.values())
    assert not any(r.is_labeled for r in unlabeled.values())
    assert builders.skipped_rows(dataset_dir) == {
        aime: {},
        dapo: {},
        processed: {},
        str(aime25): {"missing_field": 1},
        mixed: {},
    }
    # Changing a file's contents builds a new dataset rather than reusing stale rows.
    _write_jsonl(tmp_path / "aime24.jsonl", [{"problem": "new?", "answer": 1}])
    new_dir = builders.prepare_local_files(files, tmp_path / "tfds")
    assert new_dir != dataset_dir
    assert [r.question for r in _all_rows(new_dir, "unlabeled")] != [
        r.question for r in _all_rows(dataset_dir, "unlabeled")
    ]


BAD_ROWS = [
    {"question": "ok 1", "answer": "1"},  # row 1: kept
    {"answer": "2"},  # 2: missing_field
    {"question": "   ", "answer": "3"},  # 3: empty_field
    {"question": "q", "answer": []},  # 4: empty_field
    {"question": 17, "answer": "4"},  # 5: wrong_type
    {"question": "q", "answer": {"x": 1}},  # 6: wrong_type
    {"question": "q", "answer": True},  # 7: wrong_type
    b'{"question": "caf\xe9", "answer": "5"}',  # 8: non_utf8 (Latin-1 bytes)
    {"question": "\udcff", "answer": "6"},  # 9: non_utf8 (lone surrogate escape)
    {"question": "x" * 5000, "answer": "7"},  # 10: too_long
    b'{"question": "unterminated',  # 11: bad_json
    [1, 2, 3],  # 12: not_an_object
    {"question": "ok 2", "answer": ["8", 9]},  # 13: kept
    {"question": "q", "answer": None},  # 14: missing_field
]
EXPECTED_SKIPS = {
    "missing_field": 2,
    "empty_field": 2,
    "wrong_type": 3,
    "non_utf8": 2,
    "too_long": 1,
    "bad_json": 1,
    "not_an_object": 1,
}


def test_bad_rows_are_counted_per_reason(tmp_path, caplog):
    path = _write_jsonl(tmp_path / "bad.jsonl", BAD_ROWS)
    source = LocalSource(path, split="unlabeled")
    limits = RowLimits(max_question_chars=4096)
    with caplog.at_level("WARNING"):
        rows, skips = read_source(source, limits)
    assert [r.question for _, r in rows] == ["ok 1", "ok 2"]
    assert rows[1][1].answers == ("8", "9")
    assert dict(skips.counts) == EXPECTED_SKIPS
    assert "bad.jsonl: row 2: missing_field" in caplog.text
    assert "bad.jsonl: row 10: too_long" in caplog.text
    # The same counts reach the built dataset's metadata.
    dataset_dir = builders.prepare_local_files(
        LocalFilesConfig(sources=(source,), limits=limits), tmp_path / "tfds"
    )
    assert builders.skipped_rows(dataset_dir) == {path: EXPECTED_SKIPS}
    assert len(builders.open_split(dataset_dir, "unlabeled")) == 2


def test_bad_parquet_rows(tmp_path):
    path = str(tmp_path / "bad.parquet")
    pq.write_table(
        pa.table(
            {
                "question": pa.array([b"fine", b"\xff\xfe", b"", None], type=pa.binary()),
                "answer": pa.array(["1", "2", "3", "4"]),
                "flag": pa.array([1, 1, 1, 2]),
            }
        ),
        path,
    )
    rows, skips = read_source(LocalSource(path, is_labeled_field="flag"))
    assert [(s, r.question, r.is_labeled) for s, r in rows] == [("labeled", "fine", True)]
    assert dict(skips.counts) == {"non_utf8": 1, "empty_field": 1, "missing_field": 1}


def test_strict_mode_names_file_row_and_field(tmp_path):
    path = _write_jsonl(tmp_path / "strict.jsonl", BAD_ROWS)
    with pytest.raises(DataError, match=r"strict\.jsonl: row 2: missing_field: field 'question'"):
        read_source(LocalSource(path, split="labeled"), strict=True)
    with pytest.raises(DataError, match=r"strict\.jsonl: row 2"):
        builders.prepare_local_files(
            LocalFilesConfig(sources=(LocalSource(path, split="labeled"),), strict=True),
            tmp_path / "tfds",
        )


def test_file_errors_name_the_file(tmp_path):
    empty = _write_jsonl(tmp_path / "allbad.jsonl", BAD_ROWS[1:3] + [b""])
    with pytest.raises(
        DataError,
        match=r"allbad\.jsonl: no valid rows \(skipped: "
        r"empty_field=1, missing_field=1\)",
    ):
        builders.prepare_local_files(
            LocalFilesConfig(sources=(LocalSource(empty, split="labeled"),)), tmp_path / "tfds"
        )
    with pytest.raises(DataError, match="nothere.jsonl: no such file"):
        builders.prepare_local_files(
            LocalFilesConfig(
                sources=(LocalSource(str(tmp_path / "nothere.jsonl"), split="labeled"),)
            ),
            tmp_path / "tfds",
        )
    broken = tmp_path / "broken.json"
    broken.write_text('[{"question": "q", "answer": 1}, ')
    with pytest.raises(DataError, match=r"broken\.json: not a readable JSON array"):
        read_source(LocalSource(str(broken), split="labeled"))
    notparquet = tmp_path / "x.parquet"
    notparquet.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"x\.parquet: not a readable Parquet file"):
        read_source(LocalSource(str(notparquet), split="labeled"))
    (tmp_path / "a.csv").write_text("question,answer\n")
    with pytest.raises(ValueError, match=r"cannot tell the format.*'\.csv'"):
        read_source(LocalSource(str(tmp_path / "a.csv"), split="labeled"))
    with pytest.raises(ValueError, match="would share row ids 'a.jsonl:N'"):
        LocalFilesConfig(
            sources=(
                LocalSource("x/a.jsonl", split="labeled"),
                LocalSource("y/a.jsonl", split="eval"),
            )
        )
    assert (
        LocalFilesConfig(
            sources=(
                LocalSource("x/a.jsonl", split="labeled"),
                LocalSource("y/a.jsonl", split="eval", name="a2025"),
            )
        )
        .sources[1]
        .row_id_prefix()
        == "a2025"
    )
    with pytest.raises(ValueError, match="give a split, or an is_labeled_field"):
        LocalSource("a.jsonl")
    with pytest.raises(ValueError, match="split name must match"):
        LocalSource("a.jsonl", split="bad-name")
