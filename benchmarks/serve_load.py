"""Loopback load test of the web app: N concurrent /predict requests, all must succeed.

Starts `thumbview.serve.app.run` in a subprocess on 127.0.0.1 (so its memory is measured
apart from the client), fires the requests from a thread pool, and prints p50/p95 latency
and the server's peak RSS (VmHWM) as a markdown table. Without --model a small visual-only
model is trained on synthetic thumbnails first.

    python benchmarks/serve_load.py [--model DIR] [--requests 50] [--concurrency 50]
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


def _start(model: Path, port: int) -> subprocess.Popen:
    code = f"from thumbview.serve.app import run; run({str(model)!r}, port={port})"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start within 120 s")


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--image", type=Path, help="thumbnail to send (default: a synthetic one)")
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, paths = (args.model, []) if args.model else _train(Path(tmp))
        image = args.image or (paths[0] if paths else None)
        if image is None:
            raise SystemExit("--image is required with --model")
        port = _free_port()
        proc = _start(model, port)
        try:
            data = Path(image).read_bytes()
            url = f"http://127.0.0.1:{port}/predict"
            with httpx.Client(
                timeout=300, limits=httpx.Limits(max_connections=args.concurrency)
            ) as client:
                _one(client, url, data, -1)  # warm-up: first-call lazy init is not load
                idle = _rss_mb(proc.pid, "VmRSS")  # after one request: lazy init done
                t0 = time.perf_counter()
                with ThreadPoolExecutor(args.concurrency) as pool:
                    results = list(
                        pool.map(lambda i: _one(client, url, data, i), range(args.requests))
                    )
                wall = time.perf_counter() - t0
            peak = _rss_mb(proc.pid, "VmHWM")
        finally:
            proc.terminate()
            proc.wait(10)
    codes = [c for c, _ in results]
    lat = np.array([t for _, t in results]) * 1000
    print(
        "| requests | concurrency | ok | p50 ms | p95 ms | max ms | throughput req/s | RSS after 1 request MB | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {len(codes)} | {args.concurrency} | {codes.count(200)} | {np.percentile(lat, 50):.0f} | "
        f"{np.percentile(lat, 95):.0f} | {lat.max():.0f} | {len(codes) / wall:.1f} | {idle:.0f} | {peak:.0f} |"
    )
    if codes.count(200) != len(codes):
        raise SystemExit(f"{len(codes) - codes.count(200)} requests failed: {sorted(set(codes))}")


if __name__ == "__main__":
    main()
