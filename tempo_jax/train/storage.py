"""Run files on a local disk or an object store alike: the one path type for every file a run,
its evaluation, export and the launchers write or read (metrics, config.json, reports,
TensorBoard, exported checkpoints, launcher records). Orbax checkpoints use the same type.

Paths are `etils.epath.Path`: a local path, or a URI such as `gs://bucket/runs/x`, which epath
serves through fsspec (`gcsfs` for gs://, installed by the `.[gcs]` extra) or through
TensorFlow's gfile when TensorFlow is installed. Object stores differ from a local disk in two
ways that matter to a run, and the functions here hide both:

  - An object cannot be appended to; `append` on a remote path rewrites the object with the
    data added (metrics and event files grow by a few KB per step, and a step takes minutes on
    a pod).
  - Writing an object replaces it atomically (a reader sees the old or the new object, never a
    part), so `write_atomic` writes remote paths in place, and local ones through a temporary
    file, fsync and rename.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterator

import fsspec
from etils import epath

PathLike = str | os.PathLike

# TensorStore (Orbax's array writes) and other hosts add objects behind gcsfs' back, so a cached
# listing could hide a newly finalized checkpoint: bucket listings are always read afresh.
fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)


def is_remote(path: PathLike) -> bool:
    """Whether `path` is a URI of an object store (`gs://...`) rather than a local path."""
    return "://" in os.fspath(path)


def path(p: PathLike) -> epath.Path:
    """`p` as an epath: local paths made absolute (`~` expanded), URIs unchanged."""
    if is_remote(p):
        return epath.Path(p)
    return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(p))))


def absolute(p: PathLike) -> str:
    """`p` as an absolute path string (`os.path.abspath` would mangle `gs://b/x` into
    `$PWD/gs:/b/x`)."""
    return os.fspath(path(p))


def makedirs(p: PathLike) -> None:
    """Creates directory `p` and its parents (object stores have no directories: a no-op
    there)."""
    if not is_remote(p):
        os.makedirs(absolute(p), exist_ok=True)


def write_atomic(p: PathLike, data: str | bytes) -> None:
    """Replaces the file `p` with `data` (str as UTF-8) so that a reader or a crash never sees a
    partial file; creates the parent directory of a local path."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if is_remote(p):
        path(p).write_bytes(raw)
        return
    target = absolute(p)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.tmp{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def append(p: PathLike, data: str | bytes) -> None:
    """Appends `data` (str as UTF-8) to file `p` (created if missing) and makes it durable before
    returning: fsync on a local disk, a whole-object rewrite on an object store."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if is_remote(p):
        target = path(p)
        old = target.read_bytes() if target.exists() else b""
        target.write_bytes(old + raw)
        return
    target = absolute(p)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "ab") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())


def read_text(p: PathLike) -> str:
    """The UTF-8 text of file `p`."""
    return path(p).read_bytes().decode("utf-8")


def exists(p: PathLike) -> bool:
    return path(p).exists()


def walk_files(directory: PathLike) -> Iterator[str]:
    """The files below `directory`, as '/'-separated paths relative to it (depth-first).

    epath's own `walk` yields the roots of a bucket without their `gs://` (so as local paths);
    this anchors them back to `directory`.
    """
    base = path(directory)
    prefix = os.fspath(base).split("://", 1)[-1].rstrip("/")
    for root, _, names in base.walk():
        root_str = os.fspath(root).split("://", 1)[-1].rstrip("/")
        if not (root_str == prefix or root_str.startswith(prefix + "/")):
            raise RuntimeError(f"walking {directory} yielded {root_str}, outside it")
        relative = root_str[len(prefix) :].strip("/")
        for name in sorted(names):
            yield posixpath.join(relative, name) if relative else name


def copy_tree(src: PathLike, dst: PathLike) -> None:
    """Copies the files below directory `src` to `dst` (e.g. a locally written HF checkpoint to
    a bucket), keeping relative paths; existing files at `dst` are overwritten."""
    source, target = path(src), path(dst)
    for relative in walk_files(source):
        write_atomic(target / relative, (source / relative).read_bytes())
