"""Runs one `tempo-jax` command as a two-process JAX job on this host (2 x 4 CPU devices,
jax.distributed on 127.0.0.1, gloo), for the multi-host tests."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Only a hang guard (a failure, never a hang). Two training processes took 57 s at load average
# 5 on the 2-core machine, 190-220 s at load 9, and overran 240 s once at load ~10.
TIMEOUT_S = 600
# The gloo collectives and a bounded wait for the other process, as config overrides.
DISTRIBUTED_FLAGS = (
    "--config.parallel.distributed.cpu_collectives=gloo",
    "--config.parallel.distributed.initialization_timeout_s=60",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(port: int, process_id: int) -> dict[str, str]:
    """The environment of process `process_id` of 2, each one "host" with 4 CPU devices."""
    env = dict(os.environ)
    # conftest gave this process 8 devices; each process of the run is one "host" with 4.
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + ["--xla_force_host_platform_device_count=4"])
    env["JAX_PLATFORMS"] = "cpu"
    here = str(pathlib.Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), here, env.get("PYTHONPATH", "")])
    # The CLI reads the process layout from the environment (config fields left unset).
    env["JAX_COORDINATOR_ADDRESS"] = f"127.0.0.1:{port}"
    env["JAX_NUM_PROCESSES"] = "2"
    env["JAX_PROCESS_ID"] = str(process_id)
    return env


def run_two_processes(command: list[str], logs: pathlib.Path) -> list[str]:
    """Runs `command` as processes 0 and 1; their outputs (stdout and stderr). Fails (never
    hangs) if either errors or they exceed TIMEOUT_S."""
    port = free_port()
    paths = [logs / f"process_{i}.log" for i in range(2)]
    procs = []
    try:
        for pid, path in enumerate(paths):
            with open(path, "wb") as sink:  # a file, not a pipe: a full pipe would block it
                procs.append(
                    subprocess.Popen(
                        command, env=process_env(port, pid), cwd=ROOT, stdout=sink, stderr=sink
                    )
                )
        deadline = time.monotonic() + TIMEOUT_S
        while True:  # poll both: when one dies the other would wait for it until jax times out
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"{command[3:5]} processes did not finish within {TIMEOUT_S} s")
            time.sleep(0.2)
    finally:
        for proc in procs:  # never leave a process behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outputs = [p.read_text(errors="replace") for p in paths]
    failures = [
        f"process {i} exited {p.returncode}:\n{outputs[i][-4000:]}"
        for i, p in enumerate(procs)
        if p.returncode != 0
    ]
    assert not failures, "\n\n".join(failures)
    return outputs
