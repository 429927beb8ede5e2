"""Train the SentencePiece tokenizer of the built-in task (a function and a command).

    python -m tempo_jax.data.train_tokenizer --out /tmp/arith.model [--vocab_size 320]
        [--num_problems 2000] [--seed 0] [--extra_text "Question: "] [--corpus more.txt]

The corpus is questions and solutions of every split's difficulty (see `arithmetic.corpus_lines`),
plus any `--extra_text` (e.g. the words of the prompt template) and `--corpus` files (one sentence
per line).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tempo_jax.data.arithmetic import ArithmeticTaskConfig, corpus_lines
from tempo_jax.data.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece


def train_task_tokenizer(
    task: ArithmeticTaskConfig | None = None,
    *,
    vocab_size: int = 320,
    num_problems: int = 2000,
    extra_lines: Sequence[str] = (),
) -> SentencePieceTokenizer:
    """A tokenizer for `task` (None = the default task), trained on `num_problems` per split."""
    task = task if task is not None else ArithmeticTaskConfig()
    if num_problems < 1:
        raise ValueError(f"num_problems must be >= 1, got {num_problems}")
    lines = list(corpus_lines(task, num_problems))
    lines.extend(extra_lines)
    return train_sentencepiece(lines, vocab_size=vocab_size)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="path of the .model file to write")
    parser.add_argument("--vocab_size", type=int, default=320, help="target vocabulary size")
    parser.add_argument("--num_problems", type=int, default=2000, help="problems per split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the task generator")
    parser.add_argument("--extra_text", action="append", default=[], help="more training text")
    parser.add_argument("--corpus", action="append", default=[], help="UTF-8 text file(s)")
    args = parser.parse_args(argv)
    extra = list(args.extra_text)
    for path in args.corpus:
        with open(path, encoding="utf-8") as f:
            extra.extend(line.rstrip("\n") for line in f)
    tok = train_task_tokenizer(
        ArithmeticTaskConfig(seed=args.seed),
        vocab_size=args.vocab_size,
        num_problems=args.num_problems,
        extra_lines=extra,
    )
    tok.save(args.out)
    print(f"wrote {args.out}: vocab_size={tok.vocab_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
