"""``make bench-gpu``'s code on CPU at tiny sizes (so it cannot rot), and its no-GPU line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("bench_gpu")
    torch.save(torch.randn(4, 64, generator=torch.Generator().manual_seed(0)), root / "v.pt")
    cfg = {
        "name": "bench_tiny",
        "model": {"name": str(tiny_model_dir), "device": "cpu"},
        "task": {"name": "bb_rotten_tomatoes", "search_size": 8, "heldout_size": 2},
        "space": {"layers": [0, 3], "vectors": [{"name": "v", "file": str(root / "v.pt")}]},
        "strategy": {"name": "random", "population": 2},
        "budget": {"evaluations": 2},
    }
    (root / "study.yaml").write_text(yaml.safe_dump(cfg))
    return root


def test_bench_gpu_runs_its_tiny_cpu_variant(tiny_study: Path) -> None:
    out = tiny_study / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--device", "cpu", "--tiny", "--json", str(out)]
        + ["--config", str(tiny_study / "study.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    paths = [(r["path"], r["dtype"]) for r in result["fitness"]]
    assert paths == [
        ("seed loop (simple_evaluate, batch 16)", "float32"),
        ("fast path", "float32"),
        ("fast path", "bfloat16"),
    ]
    assert all(r["evals_per_s"] > 0 and r["peak_mib"] > 0 for r in result["fitness"])
    scorer = result["scorer"]
    assert [r["max_batch_tokens"] for r in scorer] == [512, 2048]
    assert all(r["tokens"] == 2 * 8 * 64 and r["tokens_per_s"] > 0 for r in scorer)
    assert "tokens/s" in proc.stdout and "x seed loop" in proc.stdout


def test_param_counts_match_the_built_models() -> None:
    sys.path.insert(0, str(BENCH.parent))
    import bench_gpu

    model = bench_gpu.random_llama(bench_gpu.SHAPES["tiny"], torch.device("cpu"), torch.float32)
    assert bench_gpu.param_count(bench_gpu.SHAPES["tiny"]) == sum(
        p.numel() for p in model.parameters()
    )
    assert 1.1e9 < bench_gpu.param_count(bench_gpu.SHAPES["1b"]) < 1.6e9
    assert 7.5e9 < bench_gpu.param_count(bench_gpu.SHAPES["8b"]) < 8.5e9


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU line (CUDA is present here)")
def test_bench_gpu_prints_one_line_without_a_gpu(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--json", str(tmp_path / "b.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.strip().splitlines() == [proc.stdout.strip()]
    assert proc.stdout.startswith("bench-gpu: no CUDA device")
    assert not (tmp_path / "b.json").exists()
