"""A checkpoint's integrity manifest: every file below its item directories with its size, and a
CRC-32 for the small ones, written inside the save's tmp directory so it commits atomically with
the checkpoint (see `checkpointing` for why and what it does not catch).
"""

from __future__ import annotations

import json
import zlib

from etils import epath

from tempo_jax.train import storage

MANIFEST_NAME = "tempo_manifest.json"
_MANIFEST_FORMAT = 1
# Files up to this size get a CRC (all metadata, JSON and OCDBT manifests); bigger array chunks
# get the size only, so verifying an 8B-parameter checkpoint costs a directory walk, not a read.
_CRC_MAX_BYTES = 1 << 20


def write_manifest(step_dir: epath.Path, step: int) -> None:
    """Writes `step_dir/MANIFEST_NAME` listing the files below `step_dir`'s item directories."""
    files = {}
    for relative in storage.walk_files(step_dir):
        if "/" not in relative:
            continue  # Top-level files belong to Orbax's commit protocol and change at commit.
        path = step_dir / relative
        size = path.stat().length
        crc = zlib.crc32(path.read_bytes()) if size <= _CRC_MAX_BYTES else None
        files[relative] = {"size": size, "crc32": crc}
    manifest = {"format": _MANIFEST_FORMAT, "step": step, "files": files}
    (step_dir / MANIFEST_NAME).write_text(json.dumps(manifest, sort_keys=True))


def verify_manifest(step_dir: epath.Path) -> str | None:
    """None if every file `step_dir`'s manifest lists is there with its size and CRC, else why."""
    try:
        manifest = json.loads((step_dir / MANIFEST_NAME).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST_NAME} unreadable: {type(e).__name__}: {e}"
    if not files:
        return f"{MANIFEST_NAME} lists no files"
    for rel, expected in sorted(files.items()):
        path = step_dir / rel
        if not path.exists():
            return f"missing file {rel}"
        size = path.stat().length
        if size != expected["size"]:
            return f"file {rel} is {size} bytes, expected {expected['size']} (truncated?)"
        if expected["crc32"] is not None and zlib.crc32(path.read_bytes()) != expected["crc32"]:
            return f"file {rel} has the wrong CRC-32 (overwritten or bit rot)"
    return None
