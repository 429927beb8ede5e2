"""Builds a prompt stream from a JSON spec; run as a script it resumes from a saved state in a
fresh process and writes the next batch as JSON. Used by test_prompt_streams."""

import json
import sys

from tempo_jax.data import builders, prompt, streams
from tempo_jax.data.sentencepiece_tokenizer import SentencePieceTokenizer


def make_stream(spec):
    """spec: dataset_dir, tokenizer_path, stream (StreamConfig kwargs), kind (mixed|labeled)."""
    tok = SentencePieceTokenizer.from_file(spec["tokenizer_path"])
    fmt = prompt.PromptFormatter(tok, prompt.PromptConfig(template="Question: {question}\n"))
    cfg = streams.StreamConfig(**spec["stream"])
    labeled = builders.open_split(spec["dataset_dir"], "labeled")
    if spec["kind"] == "labeled":
        return streams.labeled_batches(labeled, fmt, cfg)
    unlabeled = builders.open_split(spec["dataset_dir"], "unlabeled")
    return streams.mixed_batches(labeled, unlabeled, fmt, cfg)


def batch_to_json(batch):
    return {
        "prompt_tokens": batch.prompt_tokens.tolist(),
        "prompt_mask": batch.prompt_mask.tolist(),
        "is_labeled": batch.is_labeled.tolist(),
        "row_ids": list(batch.row_ids),
        "questions": list(batch.questions),
        "evaluation_answers": [list(a) for a in batch.evaluation_answers()],
    }


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    stream = make_stream(spec)
    stream.set_state(spec["state"])
    out = {"batch": batch_to_json(next(stream)), "state_after": stream.get_state()}
    with open(spec["out"], "w", encoding="utf-8") as f:
        json.dump(out, f)
