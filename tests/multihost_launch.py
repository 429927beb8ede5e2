"""Two local "hosts" for multi-host tests: processes with 4 CPU devices each, polled together.

Every multi-host test starts its processes here, so none can hang the suite: if one process dies,
the other would wait for it until jax's own timeouts, so both are polled and the survivors killed.
"""

import os
import pathlib
import socket
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_distributed(port: int, process_id: int) -> dict:
    """The `parallel.distributed` section a worker of a two-host test joins with (gloo CPU
    collectives on 127.0.0.1:`port`)."""
    return {
        "coordinator_address": f"127.0.0.1:{port}",
        "num_processes": 2,
        "process_id": process_id,
        "initialization_timeout_s": 60,
        "cpu_collectives": "gloo",
    }


def host_env(*paths: pathlib.Path, distributed: tuple[int, int, int] | None = None) -> dict:
    """This process's environment for one 4-device host, with `paths` on PYTHONPATH.

    Args:
      paths: folders the process imports from (the repo root and tests/, whose shared helpers
        test modules import, always come first).
      distributed: (port, num_processes, process_id) for the CLI, which reads the process layout
        from the environment; None clears those variables (workers pass it as arguments).
    """
    env = dict(os.environ)
    # conftest gave this process 8 devices; each process is one "host" with 4.
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + ["--xla_force_host_platform_device_count=4"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "tests"), *map(str, paths), env.get("PYTHONPATH", "")]
    )
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    if distributed is not None:
        port, num_processes, process_id = distributed
        env["JAX_COORDINATOR_ADDRESS"] = f"127.0.0.1:{port}"
        env["JAX_NUM_PROCESSES"] = str(num_processes)
        env["JAX_PROCESS_ID"] = str(process_id)
    return env


def run_hosts(
    commands: list[list[str]], envs: list[dict], logs: list[pathlib.Path], timeout_s: float
) -> list[str]:
    """Runs one process per command; their outputs once all exited 0.

    Fails (never hangs) if any exits non-zero, naming it with the tail of its output, or if they
    take longer than `timeout_s` (a hang guard only).
    """
    procs = []
    try:
        for command, env, log in zip(commands, envs, logs, strict=True):
            with open(log, "wb") as sink:  # a file, not a pipe: a full pipe would block it
                procs.append(subprocess.Popen(command, env=env, cwd=ROOT, stdout=sink, stderr=sink))
        deadline = time.monotonic() + timeout_s
        while True:
            codes = [p.poll() for p in procs]  # poll every process: any() would short-circuit
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the {len(procs)} processes did not finish within {timeout_s} s")
            time.sleep(0.2)
    finally:
        for proc in procs:  # never leave a process behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outputs = [log.read_text(errors="replace") for log in logs]
    failures = [
        f"process {i} exited {p.returncode}:\n{outputs[i][-4000:]}"
        for i, p in enumerate(procs)
        if p.returncode != 0
    ]
    assert not failures, "\n\n".join(failures)
    return outputs
