"""`tempo-jax data`: each dataset's Hub schema (fixtures written here, a few rows with duplicates
and a malformed row) becomes the file the AIME recipe reads; the Hub path runs offline from a
huggingface_hub cache, and `--model` against a fake Hub on 127.0.0.1."""

import http.server
import json
import os
import pathlib
import subprocess
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tempo_jax.config.aime_recipe import PROMPT_TEMPLATE
from tempo_jax.data import hub_datasets as hd
from tempo_jax.data.local_files import LocalSource, read_source

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"

# The raw DAPO-Math-17k release's wrapper around each question.
DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be "
    "of the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'


def dapo_rows():
    """Three questions, the first twice more (once with another answer), and one row whose
    ground truth is null: the raw release's columns and nesting."""
    rows = []
    for i, (question, answer) in enumerate(
        [
            ("What is 1+1?", "2"),
            ("Find x if 2x=6.", "3"),
            ("What is 1+1?", "2"),
            ("Compute 7*6.", "42"),
            ("What is 1+1?", "3"),
            ("Broken row.", None),
        ]
    ):
        rows.append(
            {
                "data_source": "math_dapo",
                "prompt": [{"content": DAPO_PREFIX + question + DAPO_SUFFIX, "role": "user"}],
                "ability": "MATH",
                "reward_model": {"ground_truth": answer, "style": "rule"},
                "extra_info": {"index": f"id-{i}"},
            }
        )
    return rows


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "tempo_jax.cli", "data", *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def read_jsonl(path):
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def test_dapo_raw_release_becomes_one_row_per_question_that_the_recipe_reads(tmp_path):
    src = write_parquet(tmp_path / "dapo.parquet", dapo_rows())
    out = tmp_path / "data"
    proc = cli("--dataset=dapo-math-17k", f"--source={src}", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rows read: 6, kept: 3, duplicates dropped: 2 (1 with another answer), malformed: 1" in (
        proc.stdout
    )
    assert "malformed dapo.parquet:6: missing_field" in proc.stdout
    table = pq.read_table(out / "dapo-math-17k.parquet")
    assert table.column_names == ["prompt", "solution"]
    assert table.to_pylist() == [
        {"prompt": "What is 1+1?", "solution": "2"},
        {"prompt": "Find x if 2x=6.", "solution": "3"},
        {"prompt": "Compute 7*6.", "solution": "42"},
    ]
    # The fields configs/qwen3_8b_aime.py reads, through the trainer's own reader.
    rows, skips = read_source(
        LocalSource(str(out / "dapo-math-17k.parquet"), "labeled", "prompt", "solution")
    )
    assert [r.question for _, r in rows][0] == "What is 1+1?" and not skips.counts
    assert "Answer:" not in PROMPT_TEMPLATE.replace("{question}", rows[0][1].question)
    sidecar = json.loads((out / "dapo-math-17k.parquet.source.json").read_text())
    assert sidecar["rows_kept"] == 3 and sidecar["malformed"][0]["row"] == "dapo.parquet:6"
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


def test_aime_2024_accepts_both_hub_schemas(tmp_path):
    hub = write_parquet(
        tmp_path / "aime_2024_problems.parquet",
        [
            {"ID": "2024-I-1", "Problem": "P one", "Solution": "S", "Answer": 204},
            {"ID": "2024-I-2", "Problem": "P two", "Solution": "S", "Answer": 25},
            {"ID": "2024-I-1b", "Problem": "P one", "Solution": "S", "Answer": 204},
            {"ID": "2024-I-3", "Problem": "", "Solution": "S", "Answer": 1},
        ],
    )
    report = hd.prepare_dataset("aime-2024", str(tmp_path / "a"), source=hub)
    assert (report.rows_read, report.rows_kept, report.duplicates) == (4, 2, 1)
    assert [m[0] for m in report.malformed] == ["aime_2024_problems.parquet:4"]
    assert read_jsonl(tmp_path / "a" / "aime-2024.jsonl") == [
        {"problem": "P one", "answer": "204"},
        {"problem": "P two", "answer": "25"},
    ]
    other = write_jsonl(
        tmp_path / "aime.jsonl",
        [
            '{"question": "Q one", "answer": "7"}',
            "{not json",
            '{"question": "Q one", "answer": "7"}',
            '{"question": "Q two", "answer": 11}',
        ],
    )
    report = hd.prepare_dataset("aime-2024", str(tmp_path / "b"), source=other)
    assert report.schemas == ["question/answer"] and report.duplicates == 1
    assert report.malformed[0][0] == "aime.jsonl:2" and "bad_json" in report.malformed[0][1]
    assert read_jsonl(tmp_path / "b" / "aime-2024.jsonl") == [
        {"problem": "Q one", "answer": "7"},
        {"problem": "Q two", "answer": "11"},
    ]
    lower = write_jsonl(tmp_path / "l.jsonl", ['{"problem": "L", "answer": "5", "id": 1}'])
    hd.prepare_dataset("aime-2025", str(tmp_path / "c"), source=lower)
    assert read_jsonl(tmp_path / "c" / "aime-2025.jsonl") == [{"problem": "L", "answer": "5"}]


def test_math_500_keeps_solutions_and_passthrough_maps_fields(tmp_path):
    src = write_jsonl(
        tmp_path / "test.jsonl",
        [
            json.dumps({"problem": "M1", "solution": "because", "answer": "\\frac12", "level": 2}),
            json.dumps({"problem": "M1", "solution": "again", "answer": "\\frac12", "level": 2}),
            json.dumps({"problem": "M2", "answer": "4", "solution": ""}),
        ],
    )
    report = hd.prepare_dataset("math-500", str(tmp_path), source=src)
    assert (report.rows_kept, report.duplicates, len(report.malformed)) == (1, 1, 1)
    assert read_jsonl(tmp_path / "math-500.jsonl") == [
        {"problem": "M1", "answer": "\\frac12", "solution": "because"}
    ]
    custom = write_parquet(
        tmp_path / "mine.parquet",
        [
            {"q": "A?", "meta": {"gt": "1"}},
            {"q": "B?", "meta": {"gt": "2"}},
            {"q": "A?", "meta": {"gt": "1"}},
        ],
    )
    out = tmp_path / "p"
    proc = cli(
        "--dataset=parquet",
        f"--source={custom}",
        f"--out={out}",
        "--question_field=q",
        "--answer_field=meta.gt",
        "--name=mine",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert pq.read_table(out / "mine.parquet").to_pylist() == [
        {"problem": "A?", "answer": "1"},
        {"problem": "B?", "answer": "2"},
    ]
    assert "rows read: 3, kept: 2, duplicates dropped: 1" in proc.stdout


def test_bad_schema_exits_1_naming_the_column_and_writes_nothing(tmp_path):
    src = write_parquet(tmp_path / "wrong.parquet", [{"text": "a", "label": 1}])
    out = tmp_path / "out"
    (out).mkdir()
    (out / "aime-2024.jsonl").write_text("old\n")  # an earlier good file stays as it was
    proc = cli("--dataset=aime-2024", f"--source={src}", f"--out={out}")
    assert proc.returncode == 1
    assert "missing column 'Problem' (schema Problem/Answer)" in proc.stderr
    assert "columns found: text, label" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["aime-2024.jsonl"]
    assert (out / "aime-2024.jsonl").read_text() == "old\n"
    proc = cli("--dataset=dapo-math-17k", f"--source={src}", f"--out={tmp_path / 'd'}")
    assert proc.returncode == 1 and "missing column 'prompt'" in proc.stderr
    assert not (tmp_path / "d" / "dapo-math-17k.parquet").exists()


def _cache(root, repo_type, repo_id, files):
    """A huggingface_hub cache holding `files` {path: bytes} of `repo_id` at main = COMMIT."""
    base = root / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(COMMIT)
    for name, data in files.items():
        path = base / "snapshots" / COMMIT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_hub_path_reads_the_recorded_repo_offline_from_the_cache(tmp_path):
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest: tests never reach a hub
    part = tmp_path / "p.jsonl"
    cache = tmp_path / "cache"
    spec = hd.SPECS["aime-2025"]
    files = {}
    for i, name in enumerate(spec.files):
        write_jsonl(
            part,
            [
                json.dumps({"question": f"Q{i}", "answer": str(i)}),
                json.dumps({"question": "Q0", "answer": "0"}),
            ],
        )
        files[name] = part.read_bytes()
    _cache(cache, "dataset", spec.repo_id, files)
    report = hd.prepare_dataset("aime-2025", str(tmp_path / "o"), cache_dir=str(cache))
    assert [s.commit for s in report.sources] == [COMMIT, COMMIT]
    assert report.sources[1].origin == f"hf://datasets/{spec.repo_id}@main/{spec.files[1]}"
    assert (report.rows_read, report.rows_kept, report.duplicates) == (4, 2, 2)
    assert read_jsonl(tmp_path / "o" / "aime-2025.jsonl") == [
        {"problem": "Q0", "answer": "0"},
        {"problem": "Q1", "answer": "1"},
    ]
    uri = f"hf://datasets/{spec.repo_id}@main/{spec.files[1]}"
    report = hd.prepare_dataset("jsonl", str(tmp_path / "u"), source=uri, cache_dir=str(cache))
    assert report.output == str(tmp_path / "u" / "aime2025-II.jsonl") and report.rows_kept == 2
    with pytest.raises(hd.DatasetError, match="LocalEntryNotFoundError"):
        hd.prepare_dataset("aime-2024", str(tmp_path / "x"), cache_dir=str(cache))
    with pytest.raises(hd.DatasetError, match="hf://datasets/OWNER/NAME"):
        hd.prepare_dataset("jsonl", str(tmp_path / "x"), source="hf://models/a/b/c")


def test_list_prints_repo_revision_and_schemas():
    proc = cli("--list")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "hub: datasets/BytedTsinghua-SIA/DAPO-Math-17k@main data/dapo-math-17k.parquet" in (
        proc.stdout
    )
    assert "schemas: Problem/Answer | problem/answer | question/answer" in proc.stdout


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """The three Hub endpoints `snapshot_download` uses: repo info, tree listing, resolve."""

    files: dict[str, bytes] = {}
    repo = ""
    requested: list[str] = []

    def log_message(self, *args):
        """Silent: the server's per-request log lines would only clutter the test output."""

    def _send(self, body: bytes, content_type="application/json", head=False, extra=()):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in extra:
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self, head: bool):
        path = self.path.split("?")[0]
        info = f"/api/models/{self.repo}/revision/"
        tree = f"/api/models/{self.repo}/tree/{COMMIT}"
        resolve = f"/{self.repo}/resolve/{COMMIT}/"
        if path.startswith(info):
            siblings = [{"rfilename": name} for name in self.files]
            self._send(json.dumps({"id": self.repo, "sha": COMMIT, "siblings": siblings}).encode())
        elif path.startswith(tree):
            entries = [
                {"type": "file", "path": name, "size": len(data), "oid": f"{i:040x}"}
                for i, (name, data) in enumerate(self.files.items())
            ]
            self._send(json.dumps(entries).encode())
        elif path.startswith(resolve) and path[len(resolve) :] in self.files:
            name = path[len(resolve) :]
            self.requested.append(name)
            data = self.files[name]
            etag = f'"{abs(hash(data)):040x}"'
            self._send(
                data, "application/octet-stream", head, [("X-Repo-Commit", COMMIT), ("ETag", etag)]
            )
        else:
            self.send_response(404)
            self.end_headers()

    def do_GET(self):  # noqa: N802
        self._route(head=False)

    def do_HEAD(self):  # noqa: N802
        self._route(head=True)


def test_model_download_fetches_only_checkpoint_files_and_checks_the_config(tmp_path):
    from flax import nnx

    from tempo_jax import models

    ckpt = tmp_path / "ckpt"
    policy = models.Policy(models.get_preset("tiny", vocab_size=64, num_layers=1), rngs=nnx.Rngs(0))
    models.save_hf(policy, str(ckpt))
    files = {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()}
    files["tokenizer.json"] = b"{}"
    files["pytorch_model.bin"] = b"not downloaded"
    files["onnx/model.onnx"] = b"not downloaded"
    _FakeHub.files, _FakeHub.repo, _FakeHub.requested = files, "org/Tiny-1B", []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {
            "HF_HUB_OFFLINE": "0",
            "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
            "HF_HUB_CACHE": str(tmp_path / "cache"),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        proc = cli("--model=org/Tiny-1B", f"--out={tmp_path / 'checkpoints'}", env=env)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-3000:]
    target = tmp_path / "checkpoints" / "Tiny-1B"
    got = sorted(p.name for p in target.iterdir() if p.is_file())
    assert got == sorted(n for n in files if n.endswith((".json", ".safetensors")))
    assert sorted(set(_FakeHub.requested)) == got
    assert "load_hf reads its config: 1 layers" in proc.stdout
    assert models.load_hf(str(target)).config.num_layers == 1
