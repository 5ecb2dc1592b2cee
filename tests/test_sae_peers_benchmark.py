"""benchmarks/sae_peers.py: thumbview's part end to end at tiny sizes (seconds), and the
equal-FVU ratio on curves with known answers, so the script cannot rot. The peers' parts need
their own virtual environments and run only in the benchmark itself."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sae_peers.py"


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("sae_peers_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _curve(*points):
    return [{"seconds": s, "fvu": f, "tokens": 0} for s, f in points]


def test_time_to_fvu_interpolates_between_epochs(peers):
    curve = _curve((10, 0.8), (20, 0.4), (30, 0.3))
    assert peers.time_to_fvu(curve, 0.6) == pytest.approx(15.0)
    assert peers.time_to_fvu(curve, 0.9) == 10  # met after the first epoch
    assert math.isinf(peers.time_to_fvu(curve, 0.1))


def test_equal_fvu_ratio_compares_time_to_the_same_target(peers):
    fast = {"curve": _curve((10, 0.5), (20, 0.3))}
    slow = {"curve": _curve((30, 0.5), (60, 0.3))}  # same FVUs, 3x the time
    assert peers.equal_fvu_ratio(fast, slow) == pytest.approx(3.0)
    assert peers.equal_fvu_ratio(slow, fast) == pytest.approx(1 / 3)


def test_thumbview_part_runs_end_to_end(peers, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the worker's tiny ops: no thread hand-offs
    report = peers.main([
        "--only", "thumbview", "--d-in", "32", "--expansion", "4", "--k", "4", "--batch", "64",
        "--train-rows", "512", "--heldout-rows", "128", "--epochs", "3", "--no-profile",
        "--json", str(tmp_path / "r.json"),
    ])  # fmt: skip
    tv = report["results"]["thumbview"]
    assert "skipped" not in tv, tv
    assert [p["tokens"] for p in tv["curve"]] == [512, 1024, 1536]  # 8 full batches per epoch
    fvus = [p["fvu"] for p in tv["curve"]]
    assert fvus == sorted(fvus, reverse=True) and fvus[-1] < 0.8  # it learns planted features
    assert tv["interop"] == "yes, own folder"
    assert tv["fvu_via_thumbview"] == pytest.approx(tv["curve"][-1]["fvu"], rel=1e-4)
    assert tv["study"].startswith("runs") and 0 <= tv["dead"] < 1 and tv["peak_rss_mb"] > 0
    assert report["bound_tokens_per_s"] > 0 and (tmp_path / "r.json").exists()
    assert "| thumbview |" in capsys.readouterr().out


def test_activations_file_is_split_into_training_and_held_out_rows(peers, tmp_path):
    x = np.random.default_rng(0).standard_normal((300, 24)).astype(np.float32)
    np.save(tmp_path / "acts.npy", x)
    args = peers.parse_args(
        ["--activations", str(tmp_path / "acts.npy"), "--train-rows", "200", "--heldout-rows", "50"]
    )
    train, heldout, views, what = peers.load_activations(args)
    assert train.shape == (200, 24) and heldout.shape == (50, 24) and views.shape == (250,)
    rows = {r.tobytes() for r in x}  # every row comes from the file, none twice
    picked = [r.tobytes() for r in np.concatenate([heldout, train])]
    assert set(picked) <= rows and len(set(picked)) == 250
    assert "acts.npy" in what
