"""tempo_jax.data: tokenizers, the built-in reasoning task, tfds datasets and prompt streams.

Modules, one concept each:
  tokenizer               the `Tokenizer` protocol
  sentencepiece_tokenizer SentencePiece: load a .model, `train_sentencepiece`
  train_tokenizer         `python -m tempo_jax.data.train_tokenizer --out X.model`
  hf_tokenizer            HF checkpoint tokenizer.json (+ eos / pad / chat template from configs)
  chat_template           sandboxed Jinja rendering of chat templates
  prompt                  plain or chat prompt templates (`PromptConfig`, `PromptFormatter`)
  arithmetic              the built-in multi-step arithmetic task (splits labeled/unlabeled/eval)
  row_validation          bad-row reasons, counts, strict mode (`DataError`)
  local_files             JSONL / Parquet question files with configurable fields
  records                 the stored row schema (`Row`)
  builders                tfds builders (array_record, offline) and `open_split`
  row_stream              grain-backed endless, resumable row streams
  batch                   left-padded `PromptBatch` with hidden unlabeled answers
  streams                 D_L, D_U and mixed batch streams with saveable state
  pipeline                all of the above from one config (`build_data`)
"""

import importlib

# Public names -> defining module. Resolved lazily (PEP 562) so that importing one light module
# (e.g. tempo_jax.data.arithmetic or .tokenizer) does not pull in tfds, grain and flax.
_EXPORTS = {
    "ArithmeticTaskConfig": "arithmetic",
    "Difficulty": "arithmetic",
    "Problem": "arithmetic",
    "problem_at": "arithmetic",
    "HiddenAnswers": "batch",
    "PromptArrays": "batch",
    "PromptBatch": "batch",
    "open_split": "builders",
    "prepare_arithmetic": "builders",
    "prepare_local_files": "builders",
    "ChatTemplate": "chat_template",
    "HFTokenizer": "hf_tokenizer",
    "LocalFilesConfig": "local_files",
    "LocalSource": "local_files",
    "Data": "pipeline",
    "DataConfig": "pipeline",
    "TokenizerConfig": "pipeline",
    "build_data": "pipeline",
    "data_config_from": "pipeline",
    "load_tokenizer": "pipeline",
    "PromptConfig": "prompt",
    "PromptFormatter": "prompt",
    "Row": "records",
    "RowStream": "row_stream",
    "DataError": "row_validation",
    "RowLimits": "row_validation",
    "SentencePieceTokenizer": "sentencepiece_tokenizer",
    "train_sentencepiece": "sentencepiece_tokenizer",
    "BatchStream": "streams",
    "StreamConfig": "streams",
    "Tokenizer": "tokenizer",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tempo_jax.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tempo_jax.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
