"""rollout.engine="paged": the TEMPO loop with the paged engine gives the static sampler's run
bitwise (rollouts, evaluation and the greedy pass all go through it), and a run stopped between
its rollout chunks resumes bitwise (finished chunks are the journal's units)."""

import pytest
import tempo_fault_worker
from tempo_micro import host, metric_lines, micro_config, run_trainer, trees_equal

PAGED = {
    "rollout.engine": "paged",
    "rollout.paged.page_size": 4,
    "rollout.paged.num_slots": 3,  # fewer slots than the 4 rows of a chunk: rows are refilled
    "rollout.paged.steps_per_call": 4,
}
RUN = {"total_steps": 2, "eval_every": 2, "save_every": 1}  # evaluation at steps 0 and 2
# 4 prompts x 2 samples a step, in 2 chunks of 4 rows (the engine runs on one device: any chunk
# of whole prompt groups; the static sampler's chunks must divide over the 8 fake devices).
CHUNKS = {"rollout.max_rows_per_chunk": 4}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("paged_engine_data"))


@pytest.fixture(scope="module")
def paged_run(data_dir, tmp_path_factory):
    """An uninterrupted paged run: (final policy, metric lines)."""
    workdir = tmp_path_factory.mktemp("paged")
    state = run_trainer(micro_config(data_dir, **RUN, **CHUNKS, **PAGED), workdir)
    return host(state.policy), metric_lines(workdir)


def test_paged_engine_run_equals_the_static_run(data_dir, tmp_path, paged_run):
    """The static sampler in one chunk per call, the engine in two: the same run."""
    static = run_trainer(micro_config(data_dir, **RUN), tmp_path)
    lines = metric_lines(tmp_path)
    assert len(lines) == 3 and paged_run[1] == lines  # eval at 0; steps 1 and 2 (eval at 2)
    assert trees_equal(paged_run[0], host(static.policy))


def test_paged_run_stopped_between_rollout_chunks_resumes_bitwise(
    data_dir, tmp_path, capsys, paged_run
):
    config = micro_config(data_dir, **RUN, **CHUNKS, **PAGED)
    with pytest.MonkeyPatch.context() as patched:
        tempo_fault_worker.install("sigterm_at:step 2@refine/a0/chunk0", patch=patched.setattr)
        run_trainer(config, tmp_path)
    assert "Stopped on SIGTERM in step 2 after refine/a0/chunk0" in capsys.readouterr().err
    state = run_trainer(config, tmp_path)
    assert "(inside step 2, 1 units done)" in capsys.readouterr().err
    assert trees_equal(host(state.policy), paged_run[0])
    assert metric_lines(tmp_path) == paged_run[1]
