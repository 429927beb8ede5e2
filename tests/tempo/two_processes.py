"""Runs one `tempo-jax` command as a two-process JAX job on this host (2 x 4 CPU devices,
jax.distributed on 127.0.0.1, gloo), for the multi-host tests of the trainer and `eval`; the
processes are started and polled by the suite's one launcher (`tests/multihost_launch.py`)."""

from __future__ import annotations

import pathlib

from multihost_launch import free_port, host_env, run_hosts

HERE = pathlib.Path(__file__).resolve().parent
# Only a hang guard (a failure, never a hang). Two training processes took 57 s at load average
# 5 on the 2-core machine, 190-220 s at load 9, and overran 240 s once at load ~10.
TIMEOUT_S = 600
# The gloo collectives and a bounded wait for the other process, as config overrides.
DISTRIBUTED_FLAGS = (
    "--config.parallel.distributed.cpu_collectives=gloo",
    "--config.parallel.distributed.initialization_timeout_s=60",
)


def process_env(port: int, process_id: int) -> dict[str, str]:
    """The environment of process `process_id` of 2; the CLI reads the process layout from it."""
    return host_env(HERE, distributed=(port, 2, process_id))


def run_two_processes(command: list[str], logs: pathlib.Path) -> list[str]:
    """Runs `command` as processes 0 and 1; their outputs (stdout and stderr). Fails (never
    hangs) if either errors or they exceed TIMEOUT_S."""
    port = free_port()
    return run_hosts(
        [command, command],
        [process_env(port, pid) for pid in range(2)],
        [logs / f"process_{i}.log" for i in range(2)],
        TIMEOUT_S,
    )
