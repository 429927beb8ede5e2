"""Prompt batches and streams: left padding, truncation / drop counts, mixed batches, hidden
answers, epochs and shards, and exact resume from a saved state in a new process."""

import collections
import dataclasses
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from tempo_jax.data import builders, prompt, records, streams
from tempo_jax.data.batch import HiddenAnswers, PromptArrays, collate, fit_prompt
from tempo_jax.data.local_files import LocalFilesConfig, LocalSource
from tempo_jax.data.row_stream import RowStream
from tempo_jax.data.sentencepiece_tokenizer import PAD_ID, SentencePieceTokenizer

_CHILD = pathlib.Path(__file__).with_name("data_stream_child.py")
_ROOT = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("data_stream_child", _CHILD)
child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(child)


@pytest.fixture(scope="module")
def formatter(task_tokenizer_path):
    tok = SentencePieceTokenizer.from_file(task_tokenizer_path)
    return prompt.PromptFormatter(tok, prompt.PromptConfig(template="Question: {question}\n"))


def _row(q, labeled=True, answers=("1",)):
    return records.Row(question=q, answers=answers, is_labeled=labeled, solution="", row_id=q)


def test_collate_left_pads():
    rows = [_row("a"), _row("b", labeled=False, answers=("7", "seven")), _row("c")]
    batch = collate(
        rows,
        [[5, 6, 7], [8], [9, 10, 11, 12, 13]],
        is_labeled=[True, False, True],
        max_prompt_length=6,
        pad_id=0,
    )
    assert batch.prompt_tokens.dtype == np.int32 and batch.prompt_mask.dtype == np.int32
    np.testing.assert_array_equal(
        batch.prompt_tokens, [[0, 0, 0, 5, 6, 7], [0, 0, 0, 0, 0, 8], [0, 9, 10, 11, 12, 13]]
    )
    np.testing.assert_array_equal(batch.prompt_mask.sum(1), [3, 1, 5])
    np.testing.assert_array_equal(batch.prompt_mask[:, -1], [1, 1, 1])
    np.testing.assert_array_equal(batch.is_labeled, [True, False, True])
    # Answers: labeled rows in the open, the unlabeled row's only through the evaluation accessor.
    assert batch.labeled_answers == (("1",), None, ("1",))
    assert "7" not in repr(batch.hidden_answers)
    assert batch.evaluation_answers() == (("1",), ("7", "seven"), ("1",))
    # Only arrays are pytree leaves: strings never reach jit.
    leaves = jax.tree_util.tree_leaves(batch.arrays)
    assert len(leaves) == 3 and all(isinstance(x, np.ndarray) for x in leaves)
    # pad_multiple: pad to the longest prompt rounded up, capped at max_prompt_length.
    short = collate(
        rows[:2],
        [[5, 6, 7], [8]],
        is_labeled=[True, True],
        max_prompt_length=16,
        pad_id=0,
        pad_multiple=4,
    )
    assert short.prompt_tokens.shape == (2, 4)
    with pytest.raises(ValueError, match="prompt lengths must be in"):
        collate(rows[:1], [[1] * 7], is_labeled=[True], max_prompt_length=6, pad_id=0)


def test_fit_prompt_policies():
    assert fit_prompt([1, 2, 3, 4], 3, "truncate") == ([2, 3, 4], True)
    assert fit_prompt([1, 2, 3], 3, "truncate") == ([1, 2, 3], False)
    assert fit_prompt([1, 2, 3, 4], 3, "drop") == (None, False)
    with pytest.raises(ValueError, match="overlong"):
        fit_prompt([1], 3, "cut")


def _prompt_lengths(formatter, dataset_dir, split):
    source = builders.open_split(dataset_dir, split)
    rows = [records.from_record(source[i]) for i in range(len(source))]
    return {r.row_id: formatter.encode(r.question) for r in rows}


def test_truncation_keeps_the_end_and_is_counted(formatter, small_task_dir):
    ids = _prompt_lengths(formatter, small_task_dir, "unlabeled")
    lengths = sorted(len(v) for v in ids.values())
    max_len = lengths[len(lengths) // 2]  # about half the prompts are longer
    cfg = streams.StreamConfig(batch_size=4, max_prompt_length=max_len, overlong="truncate")
    stream = streams.unlabeled_batches(
        builders.open_split(small_task_dir, "unlabeled"), formatter, cfg
    )
    expected_truncated = 0
    for _ in range(9):  # 36 rows: past one epoch of 24
        batch = next(stream)
        assert batch.prompt_tokens.shape == (4, max_len)
        for i, rid in enumerate(batch.row_ids):
            full = ids[rid]
            kept = batch.prompt_tokens[i][batch.prompt_mask[i] == 1].tolist()
            assert kept == full[-max_len:]  # left-truncated: the question's end survives
            assert (batch.prompt_tokens[i][batch.prompt_mask[i] == 0] == PAD_ID).all()
            expected_truncated += len(full) > max_len
    stats = stream.stats()
    assert stats["unlabeled/truncated"] == expected_truncated > 0
    assert stats["unlabeled/dropped"] == 0 and stats["unlabeled/rows_read"] == 36


def test_drop_skips_and_counts(formatter, small_task_dir):
    ids = _prompt_lengths(formatter, small_task_dir, "unlabeled")
    max_len = sorted(len(v) for v in ids.values())[len(ids) // 2]
    overlong = {rid for rid, v in ids.items() if len(v) > max_len}
    cfg = streams.StreamConfig(batch_size=3, max_prompt_length=max_len, overlong="drop")
    stream = streams.unlabeled_batches(
        builders.open_split(small_task_dir, "unlabeled"), formatter, cfg
    )
    seen = [rid for _ in range(8) for rid in next(stream).row_ids]
    assert not overlong & set(seen) and len(seen) == 24
    stats = stream.stats()
    # Rows read = rows kept + rows dropped, and the dropped ones are exactly the overlong ones
    # among the rows read (replayed from a fresh row stream with the same seed).
    replay = RowStream(
        builders.open_split(small_task_dir, "unlabeled"),
        seed=streams.part_seed(0, "unlabeled"),
        name="replay",
    )
    read = [next(replay).row_id for _ in range(stats["unlabeled/rows_read"])]
    assert [r for r in read if r not in overlong] == seen
    assert stats["unlabeled/dropped"] == sum(r in overlong for r in read) > 0
    # Nothing fits: a clear error instead of an endless loop.
    tiny = streams.StreamConfig(batch_size=2, max_prompt_length=2, overlong="drop")
    with pytest.raises(ValueError, match="prompts in a row are longer than max_prompt_length=2"):
        next(
            streams.unlabeled_batches(
                builders.open_split(small_task_dir, "unlabeled"), formatter, tiny
            )
        )


def test_mixed_stream_labeled_fraction_and_roles(formatter, small_task_dir):
    for batch_size, fraction, k in [
        (8, 0.25, 2),
        (8, 0.5, 4),
        (6, 1 / 3, 2),
        (4, 1.0, 4),
        (4, 0.0, 0),
    ]:
        cfg = streams.StreamConfig(
            batch_size=batch_size, max_prompt_length=40, labeled_fraction=fraction
        )
        stream = streams.mixed_batches(
            builders.open_split(small_task_dir, "labeled"),
            builders.open_split(small_task_dir, "unlabeled"),
            formatter,
            cfg,
        )
        for _ in range(5):
            batch = next(stream)
            assert int(batch.is_labeled.sum()) == k
            assert batch.is_labeled.tolist() == [True] * k + [False] * (batch_size - k)
            for rid, lab, ans in zip(
                batch.row_ids, batch.is_labeled, batch.labeled_answers, strict=True
            ):
                assert rid.startswith("labeled/" if lab else "unlabeled/")
                assert (ans is None) == (not lab)
    with pytest.raises(ValueError, match="labeled_fraction=0.1 with batch_size=4"):
        streams.StreamConfig(batch_size=4, labeled_fraction=0.1).labeled_rows_per_batch()
    # A D_L stream refuses rows whose answers are evaluation-only.
    wrong = streams.labeled_batches(
        builders.open_split(small_task_dir, "unlabeled"),
        formatter,
        streams.StreamConfig(batch_size=2, max_prompt_length=40),
    )
    with pytest.raises(ValueError, match="is unlabeled but the part is D_L"):
        next(wrong)


def test_epochs_reshuffle_and_shards_partition(small_task_dir):
    source = builders.open_split(small_task_dir, "unlabeled")
    stream = RowStream(source, seed=3)
    first = [next(stream).row_id for _ in range(24)]
    second = [next(stream).row_id for _ in range(24)]
    assert sorted(first) == sorted(second) == sorted(f"unlabeled/{i}" for i in range(24))
    assert first != second and stream.epoch == 2
    assert [next(RowStream(source, seed=3)).row_id] == first[:1]
    assert [next(RowStream(source, seed=4)).row_id for _ in range(5)] != first[:5]
    shards = [RowStream(source, seed=3, shard_index=i, shard_count=3) for i in range(3)]
    taken = [[next(s).row_id for _ in range(8)] for s in shards]
    # One epoch split three ways, no overlap.
    assert sorted(r for shard in taken for r in shard) == sorted(first)
    # In-memory rows work as a source too (e.g. for trainer tests without tfds).
    in_memory = [_row(f"m{i}") for i in range(5)]
    mem = RowStream(in_memory, seed=1)
    assert sorted(next(mem).row_id for _ in range(5)) == [f"m{i}" for i in range(5)]
    with pytest.raises(ValueError, match="seed saved 3 vs now 4"):
        RowStream(source, seed=4).set_state(stream.get_state())
    with pytest.raises(ValueError, match="lacks"):
        RowStream(source, seed=3).set_state({"position": 1})


def test_resume_in_a_new_process_gives_the_identical_next_batch(
    task_tokenizer_path, small_task_dir, tmp_path
):
    tok = SentencePieceTokenizer.from_file(task_tokenizer_path)
    lengths = sorted(
        len(v)
        for v in _prompt_lengths(
            prompt.PromptFormatter(tok, prompt.PromptConfig(template="Question: {question}\n")),
            small_task_dir,
            "unlabeled",
        ).values()
    )
    spec = {
        "dataset_dir": str(small_task_dir),
        "tokenizer_path": str(task_tokenizer_path),
        # Some unlabeled prompts are dropped, so the counters are part of what must resume.
        "stream": {
            "batch_size": 4,
            # Below the longest prompt length: those prompts (at least one) are dropped.
            "max_prompt_length": max(n for n in lengths if n < lengths[-1]),
            "labeled_fraction": 0.5,
            "overlong": "drop",
            "seed": 11,
        },
        "kind": "mixed",
    }
    stream = child.make_stream(spec)
    for _ in range(7):  # past an epoch of the 10-row labeled split (2 labeled rows per batch)
        next(stream)
    state = json.loads(json.dumps(stream.get_state()))
    expected = child.batch_to_json(next(stream))
    assert stream.stats()["labeled/rows_read"] > 10 and stream.stats()["unlabeled/dropped"] > 0
    spec.update(state=state, out=str(tmp_path / "out.json"))
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, str(_CHILD), str(tmp_path / "spec.json")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        # The child imports tempo_jax from this checkout even when it is not pip-installed.
        env=dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")])
        ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["batch"] == expected
    assert got["state_after"] == stream.get_state()
    # A fresh in-process stream restored from the same state agrees too.
    again = child.make_stream(spec)
    again.set_state(state)
    assert child.batch_to_json(next(again)) == expected
    with pytest.raises(ValueError, match="parts"):
        child.make_stream(
            {**spec, "kind": "labeled", "stream": {**spec["stream"], "labeled_fraction": 1.0}}
        ).set_state(state)


def test_unlabeled_answers_cannot_change_what_training_sees(formatter, tmp_path):
    """Two datasets that differ only in the unlabeled answers give the same batches, except
    through the evaluation accessor."""
    questions = [f"What is {i}+{i}?" for i in range(12)]

    def build(answer_of, name):
        (tmp_path / name).mkdir()
        path = tmp_path / name / "test.jsonl"  # same file name: same row ids
        path.write_text(
            "\n".join(
                json.dumps({"question": q, "answer": answer_of(i)}) for i, q in enumerate(questions)
            )
        )
        labeled = tmp_path / name / "train.jsonl"
        labeled.write_text(json.dumps({"question": "What is 1+1?", "answer": "2"}))
        files = LocalFilesConfig(
            sources=(
                LocalSource(str(path), split="unlabeled"),
                LocalSource(str(labeled), split="labeled"),
            )
        )
        d = builders.prepare_local_files(files, tmp_path / "tfds")
        cfg = streams.StreamConfig(batch_size=4, max_prompt_length=24, labeled_fraction=0.25)
        return streams.mixed_batches(
            builders.open_split(d, "labeled"), builders.open_split(d, "unlabeled"), formatter, cfg
        )

    honest = build(lambda i: str(2 * i), "honest")
    corrupt = build(lambda i: "corrupted", "corrupt")
    for _ in range(5):
        a, b = next(honest), next(corrupt)
        jax.tree_util.tree_map(np.testing.assert_array_equal, a.arrays, b.arrays)
        assert (a.questions, a.row_ids, a.labeled_answers) == (
            b.questions,
            b.row_ids,
            b.labeled_answers,
        )
        assert a.evaluation_answers() != b.evaluation_answers()
        assert collections.Counter(x[0] for x in b.evaluation_answers())["corrupted"] == 3
    # Swapping the box in place is equally invisible to everything but evaluation.
    swapped = dataclasses.replace(a, hidden_answers=HiddenAnswers([None] * 4))
    assert isinstance(swapped.arrays, PromptArrays) and swapped.arrays is a.arrays
