"""The data layer from one config: tokenizer, built dataset, and the streams a trainer reads.

    data = build_data(data_config_from(config), data_dir)
    d_l = data.labeled_batches()        # E-step / SFT / RLVR
    d_u = data.unlabeled_batches()      # M-step
    mixed = data.mixed_batches()        # tempo_mixed (authors' code path)
    for batch in data.one_pass("eval"): ...

`data_config_from` reads the `tokenizer` and `data` sections of an ml_collections config
(tempo_jax/config/defaults.py); keys it does not find keep their defaults here.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

from tempo_jax.data import builders, records, streams
from tempo_jax.data.arithmetic import ArithmeticTaskConfig, Difficulty
from tempo_jax.data.batch import PromptBatch
from tempo_jax.data.hf_tokenizer import HFTokenizer
from tempo_jax.data.local_files import LocalFilesConfig, LocalSource
from tempo_jax.data.prompt import PromptConfig, PromptFormatter
from tempo_jax.data.row_stream import RowStream
from tempo_jax.data.row_validation import RowLimits
from tempo_jax.data.sentencepiece_tokenizer import SentencePieceTokenizer
from tempo_jax.data.tokenizer import Tokenizer
from tempo_jax.data.train_tokenizer import train_task_tokenizer

SOURCES = ("builtin", "files")


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """Which tokenizer.

    Attributes:
      kind: "sentencepiece" (a .model file) or "hf" (a checkpoint directory with tokenizer.json).
      path: the file or directory; '' (sentencepiece only) trains one for the built-in task.
      vocab_size: target size of a tokenizer trained for the built-in task.
      num_problems: problems per split in that tokenizer's training corpus.
    """

    kind: str = "sentencepiece"
    path: str = ""
    vocab_size: int = 320
    num_problems: int = 2000

    def __post_init__(self):
        if self.kind not in ("sentencepiece", "hf"):
            raise ValueError(f"tokenizer.kind must be 'sentencepiece' or 'hf', got {self.kind!r}")
        if self.kind == "hf" and not self.path:
            raise ValueError("tokenizer.path: kind='hf' needs a checkpoint directory")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Everything the data layer needs.

    Attributes:
      source: "builtin" (the arithmetic task) or "files" (local JSONL / Parquet).
      task: the built-in task (source = builtin).
      files: the local files (source = files).
      tokenizer: which tokenizer.
      prompt: how questions become prompts.
      stream: batching.
    """

    source: str = "builtin"
    task: ArithmeticTaskConfig = dataclasses.field(default_factory=ArithmeticTaskConfig)
    files: LocalFilesConfig | None = None
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    prompt: PromptConfig = dataclasses.field(default_factory=PromptConfig)
    stream: streams.StreamConfig = dataclasses.field(default_factory=streams.StreamConfig)

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"data.source must be one of {SOURCES}, got {self.source!r}")
        if self.source == "files" and self.files is None:
            raise ValueError("data.source='files' needs data.labeled_files / unlabeled_files")


def load_tokenizer(config: TokenizerConfig, task: ArithmeticTaskConfig) -> Tokenizer:
    """The configured tokenizer; with an empty sentencepiece path, one trained for `task`."""
    if config.kind == "hf":
        return HFTokenizer.from_directory(config.path)
    if config.path:
        return SentencePieceTokenizer.from_file(config.path)
    return train_task_tokenizer(
        task, vocab_size=config.vocab_size, num_problems=config.num_problems
    )


@dataclasses.dataclass
class Data:
    """A built dataset with its tokenizer and prompt formatter.

    Attributes:
      config: what it was built from.
      tokenizer: the tokenizer.
      formatter: prompt template + tokenizer.
      dataset_dir: the tfds dataset directory.
    """

    config: DataConfig
    tokenizer: Tokenizer
    formatter: PromptFormatter
    dataset_dir: str

    def split(self, name: str):
        """Random-access source of a split's records."""
        return builders.open_split(self.dataset_dir, name)

    def splits(self) -> tuple[str, ...]:
        """The splits this dataset has."""
        return builders.split_names(self.dataset_dir)

    def rows(
        self,
        split: str,
        *,
        seed: int = 0,
        shuffle: bool = True,
        shard_index: int = 0,
        shard_count: int = 1,
    ) -> RowStream:
        """Raw rows (with solutions), e.g. for supervised fine-tuning on `labeled`."""
        return RowStream(
            self.split(split),
            seed=seed,
            shuffle=shuffle,
            shard_index=shard_index,
            shard_count=shard_count,
            name=split,
        )

    def _batches(self, make, splits: tuple[str, ...], shard_index: int, shard_count: int):
        """`make(*those splits, formatter, stream config, shard_index=, shard_count=)`."""
        sources = [self.split(name) for name in splits]
        shards = dict(shard_index=shard_index, shard_count=shard_count)
        return make(*sources, self.formatter, self.config.stream, **shards)

    def labeled_batches(self, *, shard_index: int = 0, shard_count: int = 1) -> streams.BatchStream:
        """D_L prompt batches."""
        return self._batches(streams.labeled_batches, ("labeled",), shard_index, shard_count)

    def unlabeled_batches(
        self, *, shard_index: int = 0, shard_count: int = 1
    ) -> streams.BatchStream:
        """D_U prompt batches (answers hidden)."""
        return self._batches(streams.unlabeled_batches, ("unlabeled",), shard_index, shard_count)

    def mixed_batches(self, *, shard_index: int = 0, shard_count: int = 1) -> streams.BatchStream:
        """Mixed D_L / D_U batches with a per-row `is_labeled` flag."""
        splits = ("labeled", "unlabeled")
        return self._batches(streams.mixed_batches, splits, shard_index, shard_count)

    def one_pass(self, split: str, batch_size: int | None = None) -> Iterator[PromptBatch]:
        """Every row of `split` once, in stored order (evaluation)."""
        cfg = self.config.stream
        if batch_size is not None:
            cfg = dataclasses.replace(cfg, batch_size=batch_size)
        return streams.one_pass_batches(self.split(split), self.formatter, cfg, name=split)

    def all_rows(self, split: str) -> list[records.Row]:
        """Every row of `split` in stored order."""
        source = self.split(split)
        return [records.from_record(source[i]) for i in range(len(source))]


def build_data(config: DataConfig, data_dir: str | os.PathLike) -> Data:
    """Loads the tokenizer and builds (or reuses) the dataset under `data_dir`."""
    data_dir = os.fspath(data_dir)
    tokenizer = load_tokenizer(config.tokenizer, config.task)
    formatter = PromptFormatter(tokenizer, config.prompt)
    if config.source == "builtin":
        dataset_dir = builders.prepare_arithmetic(config.task, data_dir)
    else:
        dataset_dir = builders.prepare_local_files(config.files, data_dir)
    return Data(config=config, tokenizer=tokenizer, formatter=formatter, dataset_dir=dataset_dir)


# --- from an ml_collections config ---------------------------------------------------------------


def _get(section: Any, key: str, default: Any) -> Any:
    # ConfigDict and dict both have .get; a missing section keeps every default.
    return default if section is None else section.get(key, default)


def _difficulty(section: Any, field: str, default: Difficulty) -> Difficulty:
    if section is None:
        return default
    values = dict(section.to_dict() if hasattr(section, "to_dict") else section)
    known = {f.name for f in dataclasses.fields(Difficulty)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{field}: unknown knobs {unknown}; known: {sorted(known)}")
    return dataclasses.replace(default, **values)


def _files(data: Any) -> LocalFilesConfig | None:
    def paths(key: str) -> list[str]:
        value = _get(data, key, "")
        items = value.split(",") if isinstance(value, str) else list(value)
        return [p.strip() for p in items if p.strip()]

    common = {
        "question_field": _get(data, "question_field", "question"),
        "answer_field": _get(data, "answer_field", "answer"),
    }

    def fields(split: str) -> dict[str, str]:
        # e.g. DAPO-Math (prompt / reward_model.ground_truth) as D_L, AIME (problem / answer) as
        # D_U: `data.<split>_question_field` / `_answer_field` override the shared names.
        return {
            key: _get(data, f"{split}_{key}", "") or common[key]
            for key in ("question_field", "answer_field")
        }

    sources = [
        LocalSource(
            p, split="labeled", solution_field=_get(data, "solution_field", ""), **fields("labeled")
        )
        for p in paths("labeled_files")
    ]
    sources += [
        LocalSource(p, split=s, **fields(s))
        for s in ("unlabeled", "eval")
        for p in paths(f"{s}_files")
    ]
    sources += [
        LocalSource(p, is_labeled_field=_get(data, "is_labeled_field", "is_labeled"), **common)
        for p in paths("mixed_files")
    ]
    if not sources:
        return None
    basenames = collections.Counter(os.path.basename(s.path) for s in sources)
    # Files that share a base name (2024/test.jsonl, 2025/test.jsonl) take their path as row-id
    # prefix, so row ids stay unique.
    sources = [
        dataclasses.replace(s, name=s.path) if basenames[os.path.basename(s.path)] > 1 else s
        for s in sources
    ]
    return LocalFilesConfig(
        sources=tuple(sources),
        limits=RowLimits(**dict(_get(data, "limits", {}) or {})),
        strict=bool(_get(data, "strict", False)),
    )


def data_config_from(config: Any) -> DataConfig:
    """A `DataConfig` from the `tokenizer` and `data` sections of a trainer config.

    Read (all optional): tokenizer.{kind, path, vocab_size, prompt_template, chat, system_prompt,
    chat_template, chat_template_kwargs, add_bos}; data.{source, labeled_files, unlabeled_files,
    eval_files, mixed_files, question_field, answer_field, {labeled, unlabeled,
    eval}_{question, answer}_field, solution_field, is_labeled_field,
    strict, task_seed, num_labeled, num_unlabeled, num_eval, labeled_difficulty,
    unlabeled_difficulty, eval_difficulty, max_prompt_length, overlong, prompts_per_step,
    labeled_fraction, pad_multiple}; and the top-level seed (data order).
    """
    tok = _get(config, "tokenizer", None)
    data = _get(config, "data", None)
    base_task = ArithmeticTaskConfig()
    task = ArithmeticTaskConfig(
        seed=int(_get(data, "task_seed", base_task.seed)),
        num_labeled=int(_get(data, "num_labeled", base_task.num_labeled)),
        num_unlabeled=int(_get(data, "num_unlabeled", base_task.num_unlabeled)),
        num_eval=int(_get(data, "num_eval", base_task.num_eval)),
        labeled=_difficulty(
            _get(data, "labeled_difficulty", None), "data.labeled_difficulty", base_task.labeled
        ),
        unlabeled=_difficulty(
            _get(data, "unlabeled_difficulty", None),
            "data.unlabeled_difficulty",
            base_task.unlabeled,
        ),
        eval=_difficulty(
            _get(data, "eval_difficulty", None), "data.eval_difficulty", base_task.eval
        ),
    )
    chat = bool(_get(tok, "chat", False))
    kwargs = _get(tok, "chat_template_kwargs", None) or {}
    prompt = PromptConfig(
        kind="chat" if chat else "plain",
        template=_get(tok, "prompt_template", PromptConfig.template),
        system=_get(tok, "system_prompt", ""),
        add_bos=bool(_get(tok, "add_bos", True)),
        chat_template=_get(tok, "chat_template", ""),
        chat_template_kwargs=dict(kwargs.to_dict() if hasattr(kwargs, "to_dict") else kwargs),
    )
    stream = streams.StreamConfig(
        batch_size=int(_get(data, "prompts_per_step", streams.StreamConfig.batch_size)),
        max_prompt_length=int(
            _get(data, "max_prompt_length", streams.StreamConfig.max_prompt_length)
        ),
        overlong=_get(data, "overlong", streams.StreamConfig.overlong),
        labeled_fraction=float(
            _get(data, "labeled_fraction", streams.StreamConfig.labeled_fraction)
        ),
        seed=int(_get(config, "seed", 0)) % 2**32,
        pad_multiple=int(_get(data, "pad_multiple", 0)),
    )
    return DataConfig(
        source=_get(data, "source", "builtin"),
        task=task,
        files=_files(data),
        tokenizer=TokenizerConfig(
            kind=_get(tok, "kind", TokenizerConfig.kind),
            path=_get(tok, "path", ""),
            vocab_size=int(_get(tok, "vocab_size", TokenizerConfig.vocab_size)),
        ),
        prompt=prompt,
        stream=stream,
    )
