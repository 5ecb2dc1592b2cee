"""Loopback load test of the web app: N concurrent /predict requests, all must succeed.

Starts `thumbview.serve.app.run` in a subprocess on 127.0.0.1 (so its memory is measured
apart from the client), fires the requests from a thread pool, and prints p50/p95 latency,
throughput and the server's peak RSS (VmHWM) as a markdown table, for the server answering
one request per model call (the old way: `Batching(window_s=0, max_batch=1)`) and with
micro-batching (the default), side by side in one run, alternating, `--rounds` times each.
`--as-filed` adds the server as issue 15 found it: one request per call *and* the `visual`
encoder's version-1 settings (`profile="reference"`, written into a copy of the model's
`encoders.json`), so the before/after of that issue is measured in the same run.
Without --model a small visual-only model is trained on synthetic thumbnails first; the
thumbnails sent are distinct (each request its own image and title).

    python benchmarks/serve_load.py [--model DIR --image F] [--requests 50] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np


def _train(root: Path) -> tuple[Path, list[Path]]:
    from thumbview.data.dataset import load_dataset
    from thumbview.data.synth import SynthConfig, make_synthetic
    from thumbview.predict.model import PredictorConfig
    from thumbview.predict.workflow import train

    make_synthetic(root / "ds", SynthConfig(n=60, seed=0))
    ds = load_dataset(root / "ds")
    train(ds, PredictorConfig(encoders=("visual",)), root / "model", holdout_frac=0)
    return root / "model", ds.paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MODES = {"one request per call": (0.0, 1), "micro-batched (default)": None}
AS_FILED = "as filed: version-1 visual, one request per call"


def _as_filed(model: Path, root: Path) -> Path:
    """A copy of `model` whose `visual` encoder uses version 1's settings (the weights stay:
    the serving cost is measured, not the predictions)."""
    import json
    import shutil

    from thumbview.embed.visual import VisualEncoder

    copy = root / "model-as-filed"
    shutil.copytree(model, copy)
    path = copy / "encoders.json"
    saved = json.loads(path.read_text())
    if "visual" not in saved:
        raise SystemExit("--as-filed needs a model with the visual encoder")
    options = {**saved["visual"]["options"], "profile": "reference"}
    saved["visual"] = {"options": options, "spec": VisualEncoder(**options).spec()}
    path.write_text(json.dumps(saved))
    return copy


def _start(model: Path, port: int, batching: tuple[float, int] | None) -> subprocess.Popen:
    setting = "Batching()" if batching is None else f"Batching{batching!r}"
    code = (
        "from thumbview.serve.app import run; from thumbview.serve.engine import Batching; "
        f"run({str(model)!r}, port={port}, announce=lambda line: None, batching={setting})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600  # model loading is slow on a busy machine
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start within 600 s")


def _rss_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _one(client: httpx.Client, url: str, data: bytes, i: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    resp = client.post(
        url, files={"image": (f"t{i}.jpg", data, "image/jpeg")}, data={"title": f"video {i}"}
    )
    return resp.status_code, time.perf_counter() - t0


def _load(model: Path, images: list[bytes], args, batching) -> dict:
    """One server, one warm-up request, then the concurrent load; latency, RSS, status codes."""
    port = _free_port()
    proc = _start(model, port, batching)
    try:
        url = f"http://127.0.0.1:{port}/predict"
        limits = httpx.Limits(max_connections=args.concurrency)
        with httpx.Client(timeout=600, limits=limits) as client:
            _one(client, url, images[0], -1)  # warm-up: first-call lazy init is not load
            idle = _rss_mb(proc.pid, "VmRSS")
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                results = list(
                    pool.map(
                        lambda i: _one(client, url, images[i % len(images)], i),
                        range(args.requests),
                    )
                )
            wall = time.perf_counter() - t0
        peak = _rss_mb(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(10)
    codes = [c for c, _ in results]
    lat = np.array([t for _, t in results]) * 1000
    return {"codes": codes, "lat": lat, "rps": len(codes) / wall, "idle": idle, "peak": peak}


def _in_process(model: Path, images: list[bytes], n: int, rounds: int) -> None:
    """The model calls alone, no HTTP: n rows one call each vs one call of n rows,
    interleaved `rounds` times (so load from other jobs hits both alike)."""
    import io

    from PIL import Image

    from thumbview.serve.engine import Engine
    from thumbview.serve.uploads import DecodedImage

    engine = Engine.load(model)
    rows = [
        (
            DecodedImage(
                f"t{i}.jpg", Image.open(io.BytesIO(images[i % len(images)])).convert("RGB")
            ),
            f"video {i}",
            {},  # no context: the training medians (one group, one encoder call)
        )
        for i in range(n)
    ]
    engine._predict_rows(rows[:2])  # warm-up: lazy model loading is not the cost measured
    single, batched = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for row in rows:
            engine._predict_rows([row])
        single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        engine._predict_rows(rows)
        batched.append(time.perf_counter() - t0)
    print(
        f"| {model.name} | {n} | {n / np.median(single):.1f} | {n / np.median(batched):.1f} | "
        f"{np.median(single) / np.median(batched):.2f}x |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument(
        "--image", type=Path, nargs="+", help="thumbnails to send in turn (default: synthetic)"
    )
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=1, help="runs of each mode, alternating")
    ap.add_argument(
        "--in-process", action="store_true", help="time the model calls alone, without HTTP"
    )
    ap.add_argument(
        "--as-filed", action="store_true", help="also the server as issue 15 found it (see above)"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, paths = (args.model, []) if args.model else _train(Path(tmp))
        paths = args.image or paths
        if not paths:
            raise SystemExit("--image is required with --model")
        images = [Path(p).read_bytes() for p in paths]
        if args.in_process:
            print("| model | rows | rows/s one per call | rows/s one call | ratio |")
            print("|---|---:|---:|---:|---:|")
            _in_process(model, images, min(args.requests, 32), args.rounds)
            return
        servers = {name: (model, batching) for name, batching in MODES.items()}
        if args.as_filed:
            servers[AS_FILED] = (_as_filed(model, Path(tmp)), MODES["one request per call"])
        runs: dict[str, list[dict]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, (folder, batching) in servers.items():
                runs[name].append(_load(folder, images, args, batching))
    _report(runs, args)


def _report(runs: dict[str, list[dict]], args) -> None:
    print(
        "| server | requests | concurrency | ok | p50 ms | p95 ms | throughput req/s | "
        "RSS after 1 request MB | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rps = {}
    for name, results in runs.items():
        for r in results:
            codes, lat = r["codes"], r["lat"]
            print(
                f"| {name} | {len(codes)} | {args.concurrency} | {codes.count(200)} | "
                f"{np.percentile(lat, 50):.0f} | {np.percentile(lat, 95):.0f} | {r['rps']:.1f} | "
                f"{r['idle']:.0f} | {r['peak']:.0f} |"
            )
        rps[name] = float(np.median([r["rps"] for r in results]))
    naive, batched = rps["one request per call"], rps["micro-batched (default)"]
    print(
        f"\nthroughput ratio (micro-batched / one per call, median of rounds): {batched / naive:.2f}x"
    )
    if AS_FILED in rps:
        print(f"throughput ratio (micro-batched / as filed): {batched / rps[AS_FILED]:.2f}x")
    failed = [c for rs in runs.values() for r in rs for c in r["codes"] if c != 200]
    if failed:
        raise SystemExit(f"{len(failed)} requests failed: {sorted(set(failed))}")


if __name__ == "__main__":
    main()
