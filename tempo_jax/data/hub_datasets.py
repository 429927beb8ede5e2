"""`tempo-jax data --dataset=NAME`: a Hub dataset (or a local copy) as the file a recipe reads.

Each dataset is a `DatasetSpec`: its Hub repo, the revision read by default, the files in it, the
schemas (column sets) it is published in, and how a row becomes an output row. Output files,
under --out=DIR, are those `tempo_jax/config/aime_recipe.py` reads:

    dapo-math-17k.parquet   prompt / solution (the question without the release's `Answer:`
                            instruction, so the recipe's \\boxed{} template applies; one row per
                            distinct question: the raw release repeats each about 100 times)
    aime-2024.jsonl         problem / answer
    aime-2025.jsonl         problem / answer
    math-500.jsonl          problem / answer / solution

`--dataset=jsonl` / `parquet` copies any file into problem / answer columns, with the source's
columns named by --question_field / --answer_field.

Sources: without --source, the spec's files are downloaded through `huggingface_hub`
(`hf_hub_download`: its cache, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE apply); an
`hf://datasets/OWNER/NAME[@REVISION]/PATH` URI reads that file the same way, and any other
--source is a local file. A file whose columns fit none of the spec's schemas fails with
`DatasetError` naming the missing column and the columns found. Rows that cannot be used
(missing or empty question or answer, bad JSON) are dropped and counted with their row numbers.
The output is written to a temporary file in DIR and renamed into place, so it is either
complete or absent; a sidecar `<output>.source.json` records where it came from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Callable
from typing import Any

from tempo_jax.data import row_validation as rv
from tempo_jax.data.local_files import LocalSource, read_objects


class DatasetError(ValueError):
    """A dataset that cannot be prepared (unknown name, unreadable source, unexpected schema)."""


@dataclasses.dataclass(frozen=True)
class Schema:
    """One column layout a dataset is published in; dotted names walk nested objects.

    Attributes:
      question: the question column (text, or a list of chat messages).
      answer: the ground-truth column.
      solution: a worked-solution column copied to the output ('' = none).
    """

    question: str
    answer: str
    solution: str = ""

    def columns(self) -> tuple[str, ...]:
        """The top-level columns this schema needs."""
        return tuple(c.split(".")[0] for c in (self.question, self.answer) if c)

    def __str__(self) -> str:
        return "/".join(c for c in (self.question, self.answer, self.solution) if c)


# The DAPO-Math-17k release wraps every question in an instruction to end with an `Answer:` line;
# the recipe asks for \boxed{} instead, so both halves of the wrapper are removed.
_DAPO_PREFIX = re.compile(
    r"^\s*Solve the following math problem step by step\..*?"
    r"where \$Answer is the answer to the problem\.\s*",
    re.DOTALL,
)
_DAPO_SUFFIX = re.compile(
    r"\s*Remember to put your answer on its own line after \"Answer:\"\.?\s*$", re.DOTALL
)


def strip_answer_instruction(question: str) -> str:
    """The DAPO-Math-17k question without its `Answer:` instruction (unchanged if absent)."""
    return _DAPO_SUFFIX.sub("", _DAPO_PREFIX.sub("", question)).strip()


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset `tempo-jax data` knows.

    Attributes:
      name: the --dataset name.
      repo_id: the Hub dataset repo ('' = local files only).
      revision: the revision read by default (a branch, tag or commit; --revision overrides).
      files: the files read from the repo (their rows are concatenated).
      schemas: the column layouts accepted (the first one a file fits is used).
      output: the output file name (.jsonl or .parquet).
      question_out, answer_out: the output columns.
      solution_out: the output column of `Schema.solution` ('' = not written).
      clean_question: applied to each question before deduplication.
      note: one line for --list.
    """

    name: str
    repo_id: str
    revision: str
    files: tuple[str, ...]
    schemas: tuple[Schema, ...]
    output: str
    question_out: str = "problem"
    answer_out: str = "answer"
    solution_out: str = ""
    clean_question: Callable[[str], str] = str.strip
    note: str = ""


def _aime(name: str, repo_id: str, files: tuple[str, ...], note: str) -> DatasetSpec:
    """An AIME problem set: problem / answer columns in any of their spellings, to JSONL."""
    schemas = (
        Schema("Problem", "Answer"),  # ID / Problem / Solution / Answer
        Schema("problem", "answer"),
        Schema("question", "answer"),
    )
    revision, output = "main", f"{name}.jsonl"
    return DatasetSpec(name, repo_id, revision, files, schemas, output, note=note)


def _passthrough(extension: str, label: str) -> DatasetSpec:
    """Any local file (--source) to problem / answer columns in `extension` format."""
    note = f"any file (--source) -> problem / answer {label}; --question_field, --answer_field"
    hub = dict(repo_id="", revision="", files=(), schemas=())  # none: a local file
    return DatasetSpec(name=extension, output=f"{{name}}.{extension}", note=note, **hub)


SPECS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec(
            name="dapo-math-17k",
            repo_id="BytedTsinghua-SIA/DAPO-Math-17k",
            revision="main",
            files=("data/dapo-math-17k.parquet",),
            schemas=(
                Schema("prompt", "reward_model.ground_truth"),  # the raw release
                Schema("prompt", "solution"),  # already processed
            ),
            output="dapo-math-17k.parquet",
            question_out="prompt",
            answer_out="solution",
            clean_question=strip_answer_instruction,
            note="D_L of the AIME recipes; deduplicated by question, `Answer:` instruction removed",
        ),
        _aime(
            "aime-2024",
            "Maxwell-Jia/AIME_2024",
            ("aime_2024_problems.parquet",),
            "D_U of the AIME recipes (30 problems)",
        ),
        _aime(
            "aime-2025",
            "opencompass/AIME2025",
            ("aime2025-I.jsonl", "aime2025-II.jsonl"),
            "holdout of the AIME recipes (30 problems: parts I and II)",
        ),
        DatasetSpec(
            name="math-500",
            repo_id="HuggingFaceH4/MATH-500",
            revision="main",
            files=("test.jsonl",),
            schemas=(Schema("problem", "answer", "solution"), Schema("problem", "answer")),
            output="math-500.jsonl",
            solution_out="solution",
            note="MATH-500 (problem / answer / solution)",
        ),
        _passthrough("jsonl", "JSONL"),
        _passthrough("parquet", "Parquet"),
    )
}


def describe_registry() -> str:
    """One block per dataset: Hub repo, revision, files, accepted schemas and output."""
    lines = []
    for spec in SPECS.values():
        lines.append(f"{spec.name}: {spec.note}")
        if spec.repo_id:
            lines.append(f"  hub: datasets/{spec.repo_id}@{spec.revision} {', '.join(spec.files)}")
            lines.append(f"  schemas: {' | '.join(str(s) for s in spec.schemas)}")
        lines.append(
            f"  writes: {spec.output} ({spec.question_out} / {spec.answer_out}"
            + (f" / {spec.solution_out}" if spec.solution_out else "")
            + ")"
        )
    return "\n".join(lines)


# --- sources -------------------------------------------------------------------------------------

_HF_URI = re.compile(r"^hf://datasets/(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?/(?P<path>.+)$")


@dataclasses.dataclass(frozen=True)
class Source:
    """One file read: its local path and where it came from (for the report and the sidecar)."""

    path: str
    origin: str
    commit: str = ""


def parse_hf_uri(uri: str) -> tuple[str, str, str]:
    """(repo id, revision or '', path in repo) of `hf://datasets/OWNER/NAME[@REV]/PATH`."""
    match = _HF_URI.match(uri)
    if match is None:
        raise DatasetError(
            f"--source={uri}: an hf:// source must be hf://datasets/OWNER/NAME[@REVISION]/PATH"
        )
    return match["repo"], match["rev"] or "", match["path"]


def _hub_file(repo_id: str, filename: str, revision: str, cache_dir: str | None) -> Source:
    """A dataset file through `huggingface_hub` (downloaded once into its cache)."""
    from huggingface_hub import hf_hub_download  # only Hub reads pay for the import
    from huggingface_hub.errors import HfHubHTTPError

    origin = f"hf://datasets/{repo_id}@{revision}/{filename}"
    try:
        path = hf_hub_download(
            repo_id, filename, repo_type="dataset", revision=revision, cache_dir=cache_dir
        )
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise DatasetError(f"{origin}: {type(e).__name__}: {e}") from None
    # The cache keeps files under snapshots/<commit>/: that is the revision actually read.
    parts = os.path.normpath(path).split(os.sep)
    commit = parts[parts.index("snapshots") + 1] if "snapshots" in parts else ""
    return Source(path, origin, commit)


def resolve_sources(
    spec: DatasetSpec, source: str | None, revision: str | None, cache_dir: str | None = None
) -> list[Source]:
    """The local files to read for `spec` (downloading Hub files)."""
    if source and source.startswith("hf://"):
        repo_id, uri_revision, filename = parse_hf_uri(source)
        return [_hub_file(repo_id, filename, revision or uri_revision or "main", cache_dir)]
    if source:
        if not os.path.isfile(source):
            raise DatasetError(f"--source={source}: no such file")
        return [Source(os.path.abspath(source), os.path.abspath(source))]
    if not spec.repo_id:
        raise DatasetError(f"--dataset={spec.name} needs --source=FILE (or an hf:// URI)")
    return [_hub_file(spec.repo_id, f, revision or spec.revision, cache_dir) for f in spec.files]


# --- conversion ----------------------------------------------------------------------------------


def _file_format(path: str) -> str:
    try:
        return LocalSource(path, split="labeled").file_format()
    except ValueError as e:
        raise DatasetError(str(e)) from None


def _columns(path: str, file_format: str) -> list[str]:
    """The top-level columns of a file: a Parquet schema's, else the keys of its first object."""
    if file_format == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as e:  # pyarrow raises its own ArrowInvalid family
            raise DatasetError(f"{path}: not a readable Parquet file: {e}") from e
    for _, obj in read_objects(path, file_format):
        if isinstance(obj, dict):
            return list(obj)
    return []


def choose_schema(path: str, columns: list[str], schemas: tuple[Schema, ...]) -> Schema:
    """The first schema whose columns `columns` has; else a `DatasetError` naming, for each
    schema, the column it misses, and the columns found."""
    missing = []
    for schema in schemas:
        absent = [c for c in schema.columns() if c not in columns]
        if not absent:
            return schema
        missing.append(f"column {absent[0]!r} (schema {schema})")
    raise DatasetError(
        f"{path}: unexpected schema: missing {' or '.join(missing)}; "
        f"columns found: {', '.join(columns) or 'none'}"
    )


@dataclasses.dataclass
class PrepareReport:
    """What `prepare_dataset` read and wrote."""

    dataset: str
    output: str
    sources: list[Source]
    schemas: list[str]
    rows_read: int = 0
    rows_kept: int = 0
    duplicates: int = 0
    conflicting_duplicates: int = 0
    malformed: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """Console lines: sources, counts, malformed rows (the first 20) and the output."""
        lines = [
            f"read: {s.origin}" + (f" (commit {s.commit})" if s.commit else "")
            for s in self.sources
        ]
        lines.append(f"schema: {', '.join(self.schemas)}")
        lines.append(
            f"rows read: {self.rows_read}, kept: {self.rows_kept}, duplicates dropped: "
            f"{self.duplicates} ({self.conflicting_duplicates} with another answer), malformed: "
            f"{len(self.malformed)}"
        )
        for where, reason in self.malformed[:20]:
            lines.append(f"  malformed {where}: {reason}")
        if len(self.malformed) > 20:
            lines.append(f"  ... {len(self.malformed) - 20} more")
        lines.append(f"wrote: {self.output}")
        return "\n".join(lines)

    def sidecar(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "sources": [dataclasses.asdict(s) for s in self.sources],
            "schemas": self.schemas,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "duplicates": self.duplicates,
            "conflicting_duplicates": self.conflicting_duplicates,
            "malformed": [{"row": w, "reason": r} for w, r in self.malformed],
        }


def _convert(
    spec: DatasetSpec, sources: list[Source], schemas: tuple[Schema, ...], report: PrepareReport
) -> list[dict[str, Any]]:
    """Output rows of every source, malformed rows dropped and duplicates (by cleaned question)
    after the first dropped."""
    limits = rv.RowLimits()
    kept: dict[str, dict[str, Any]] = {}
    for source in sources:
        file_format = _file_format(source.path)
        schema = choose_schema(source.path, _columns(source.path, file_format), schemas)
        report.schemas.append(str(schema))
        name = os.path.basename(source.path)
        for number, obj in read_objects(source.path, file_format):
            report.rows_read += 1
            try:
                if isinstance(obj, rv.RowSkipped):
                    raise obj
                if not isinstance(obj, dict):
                    raise rv.RowSkipped(rv.NOT_AN_OBJECT, f"a {type(obj).__name__}")
                question = rv.coerce_question(
                    rv.get_field(obj, schema.question), schema.question, limits
                )
                question = spec.clean_question(question)
                if not question:
                    raise rv.RowSkipped(rv.EMPTY_FIELD, f"field {schema.question!r} is empty")
                answers = rv.coerce_answers(rv.get_field(obj, schema.answer), schema.answer, limits)
                row = {spec.question_out: question, spec.answer_out: answers[0]}
                if spec.solution_out and schema.solution:
                    row[spec.solution_out] = rv.coerce_solution(
                        rv.get_field(obj, schema.solution), schema.solution, limits
                    )
            except rv.RowSkipped as err:
                report.malformed.append((f"{name}:{number}", f"{err.reason}: {err.detail}"))
                continue
            if question in kept:
                report.duplicates += 1
                report.conflicting_duplicates += kept[question][spec.answer_out] != answers[0]
                continue
            kept[question] = row
    report.rows_kept = len(kept)
    return list(kept.values())


def write_atomic_local(path: str, write: Callable[[str], None]) -> None:
    """Runs `write(temporary path)` in `path`'s directory, then renames it to `path`; on any
    error the temporary file is removed and `path` is left as it was."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    write_atomic_local(path, write)


def _write_rows(path: str, rows: list[dict[str, Any]]) -> None:
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        write_atomic_local(path, lambda tmp: pq.write_table(pa.Table.from_pylist(rows), tmp))
        return

    _write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def prepare_dataset(
    name: str,
    out: str,
    *,
    source: str | None = None,
    revision: str | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
    output_name: str | None = None,
    cache_dir: str | None = None,
) -> PrepareReport:
    """Writes dataset `name` under `out` (module docstring); returns what it read and wrote.

    Args:
      name: a `SPECS` name.
      out: the output directory.
      source: a local file or an hf:// URI (None: the spec's Hub files).
      revision: the Hub revision (None: the spec's, or the URI's).
      question_field, answer_field: the source's columns (the passthrough datasets; for the
        others they replace the spec's schemas).
      output_name: the passthrough's output base name (default: the source file's).
      cache_dir: the huggingface_hub cache (None: its default, HF_HUB_CACHE).

    Raises:
      DatasetError: unknown name, missing source, unexpected schema, or no usable row.
    """
    if name not in SPECS:
        raise DatasetError(f"--dataset={name}: unknown; known: {', '.join(SPECS)}")
    spec = SPECS[name]
    schemas = spec.schemas
    if question_field or answer_field:
        schemas = (Schema(question_field or "question", answer_field or "answer"),)
    elif not schemas:  # the passthroughs' default columns
        schemas = (Schema("question", "answer"), Schema("problem", "answer"))
    sources = resolve_sources(spec, source, revision, cache_dir)
    base = output_name or os.path.splitext(os.path.basename(sources[0].path))[0]
    output = os.path.join(out, spec.output.format(name=base))
    report = PrepareReport(name, output, sources, [])
    rows = _convert(spec, sources, schemas, report)
    if not rows:
        raise DatasetError(
            f"{', '.join(s.origin for s in sources)}: no usable row "
            f"({len(report.malformed)} malformed of {report.rows_read})"
        )
    _write_rows(output, rows)
    _write_text(output + ".source.json", json.dumps(report.sidecar(), indent=1) + "\n")
    return report
