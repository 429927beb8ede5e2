"""`keep_best`: the checkpoint with the best eval metric survives keep-N, across a restart of the
Checkpointer, in both directions; the async save timeout reaches Orbax."""

import math

import numpy as np
import pytest

from tempo_jax.train.checkpointing import Checkpointer

METRIC = "eval/unlabeled/mean@2"


def _save(ckpt, step, value):
    metrics = None if value is None else {METRIC: value, "eval/other": 0.5}
    ckpt.save(step, {"w": {"x": np.full(3, step, np.float32)}}, {"step": step}, metrics)
    ckpt.wait()


def test_best_checkpoint_is_kept_besides_the_last_n(tmp_path):
    directory = tmp_path / "ckpt"
    with Checkpointer(directory, keep=2, async_save=False, keep_best=METRIC) as ckpt:
        # Step 4 saved without an eval, step 6 with a non-finite value: ranked by recency only.
        for step, value in [(1, 0.1), (2, 0.9), (3, 0.3), (4, None), (5, 0.2), (6, math.nan)]:
            _save(ckpt, step, value)
        assert ckpt.all_steps() == [2, 5, 6]
        assert ckpt.best_step() == 2
    # A restarted run reads the stored metrics back: step 2 still outranks newer saves...
    with Checkpointer(directory, keep=2, async_save=False, keep_best=METRIC) as ckpt:
        _save(ckpt, 7, 0.5)
        _save(ckpt, 8, None)
        assert ckpt.all_steps() == [2, 7, 8]
        # ... until a better one comes; the old best then goes like any other.
        _save(ckpt, 9, 0.95)
        assert ckpt.all_steps() == [8, 9]
        assert ckpt.best_step() == 9
        items, metadata = ckpt.restore()  # the newest, as always; "metrics" is not an item
        assert ckpt.restored_step == 9 and set(items) == {"w"} and metadata == {"step": 9}
        np.testing.assert_array_equal(items["w"]["x"], np.full(3, 9, np.float32))


def test_keep_best_min_mode_and_keep_n_without_it(tmp_path):
    values = [(1, 0.4), (2, 0.1), (3, 0.3), (4, 0.2)]
    with Checkpointer(
        tmp_path / "min", keep=1, async_save=False, keep_best=METRIC, keep_best_mode="min"
    ) as ckpt:
        for step, value in values:
            _save(ckpt, step, value)
        assert ckpt.all_steps() == [2, 4] and ckpt.best_step() == 2
    with Checkpointer(tmp_path / "plain", keep=1, async_save=False) as ckpt:
        for step, value in values:
            _save(ckpt, step, value)  # metrics are ignored without keep_best
        assert ckpt.all_steps() == [4] and ckpt.best_step() is None
        assert not (tmp_path / "plain" / "4" / "metrics").exists()


def test_async_timeout_reaches_orbax_and_bad_options_are_refused(tmp_path):
    with Checkpointer(tmp_path / "t", async_timeout_s=3600) as ckpt:
        assert ckpt._mgr._options.async_options.timeout_secs == 3600
    with pytest.raises(ValueError, match="async_timeout_s"):
        Checkpointer(tmp_path / "x", async_timeout_s=0)
    with pytest.raises(ValueError, match="keep_best_mode"):
        Checkpointer(tmp_path / "y", keep_best=METRIC, keep_best_mode="best")
