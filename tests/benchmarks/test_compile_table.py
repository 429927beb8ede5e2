"""benchmarks/compile/table.py's rollout rows from a committed compile report (no compiling)."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _table():
    spec = importlib.util.spec_from_file_location("table", ROOT / "benchmarks/compile/table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rollout_rows_of_qwen3_8b_on_v5p():
    path = ROOT / "benchmarks/compile/qwen3_8b_aime.v5p-2x2x4.json"
    rows = _table().rollout_rows([path])
    assert rows[0].startswith("| recipe | topology | decode weights | distribution |")
    cells = {r.split(" | ")[3]: r.strip("| ").split(" | ") for r in rows[2:]}
    assert set(cells) == {"full", "aime"}
    for name, row in cells.items():
        engine, floor, ratio, static = float(row[4]), float(row[5]), float(row[6]), float(row[7])
        assert row[2] == "tensor (tensor 4)"  # auto: tensor-parallel decode is faster here
        assert static == 3615  # today's sampler: 16 chunks decoded to 16384 tokens
        assert floor < engine < static / 2.5
        assert ratio == round(engine / floor, 2) and ratio <= 1.25, name
