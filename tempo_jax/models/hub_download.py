"""`tempo-jax data --model=REPO`: a model's safetensors, config and tokenizer files from the
Hugging Face Hub into OUT/<name>, checked to be readable by `load_hf`.

Only the files a run reads are downloaded (`ALLOW_PATTERNS`): no PyTorch `.bin` / `.pth`
weights, no ONNX or GGUF copies. `huggingface_hub.snapshot_download` does the transfer (resumable;
HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE apply) into `local_dir`, so the directory is the plain
checkpoint layout `$TEMPO_ROOT/checkpoints/<name>` that the AIME recipes read.
"""

from __future__ import annotations

import dataclasses
import os

from tempo_jax.models.errors import CheckpointError
from tempo_jax.models.hf_io import check_hf_checkpoint

ALLOW_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


class ModelDownloadError(OSError):
    """The download failed, or its result is not a checkpoint `load_hf` reads."""


@dataclasses.dataclass(frozen=True)
class ModelDownload:
    """What was downloaded: the directory, its files (name, bytes), the config it holds."""

    repo_id: str
    revision: str
    directory: str
    files: tuple[tuple[str, int], ...]
    architecture: str
    tensors: int

    def summary(self) -> str:
        """Console lines: the files, their total size and the config check."""
        total = sum(size for _, size in self.files)
        lines = [f"model: {self.repo_id}@{self.revision} -> {self.directory}"]
        lines += [f"  {name} ({size:,} bytes)" for name, size in self.files]
        lines.append(f"{len(self.files)} files, {total / 2**30:.2f} GiB")
        lines.append(f"load_hf reads its config: {self.architecture}, {self.tensors} tensors")
        return "\n".join(lines)


def download_model(
    repo_id: str, out: str, *, revision: str | None = None, cache_dir: str | None = None
) -> ModelDownload:
    """Downloads `repo_id`'s checkpoint files into `out/<repo name>` and checks that `load_hf`
    can read its config and finds every tensor file.

    Raises:
      ModelDownloadError: the Hub or the cache cannot give the files, or they are not a
        checkpoint `load_hf` reads.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    directory = os.path.join(os.path.abspath(out), repo_id.rstrip("/").split("/")[-1])
    try:
        snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=list(ALLOW_PATTERNS),
            local_dir=directory,
            cache_dir=cache_dir,
        )
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise ModelDownloadError(f"{repo_id}: {type(e).__name__}: {e}") from None
    files = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = [d for d in dirs if d != ".cache"]  # huggingface_hub's download metadata
        for name in names:
            path = os.path.join(root, name)
            files.append((os.path.relpath(path, directory), os.path.getsize(path)))
    try:
        config, _, tensors = check_hf_checkpoint(directory)
    except CheckpointError as e:
        raise ModelDownloadError(f"{repo_id} downloaded to {directory}, but {e}") from None
    architecture = (
        f"{config.num_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}"
    )
    return ModelDownload(
        repo_id, revision or "main", directory, tuple(sorted(files)), architecture, tensors
    )
