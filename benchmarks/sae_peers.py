"""thumbview's TopK SAE beside the field's libraries (SAELens, EleutherAI sparsify, overcomplete).

One run, the same activations, the same SAE size (d_sae, k = 32), the same batch size and the
same number of training tokens (several epochs) for every library; each library trains with
the optimiser and learning-rate schedule it recommends, in its own process (and, where its
dependencies clash, its own virtual environment). Per library: training tokens/s, peak RSS
(the worker process's VmHWM), held-out FVU after each epoch, dead latents on the held-out rows,
and whether its SAE reads back through thumbview's SAELens-layout loader
(`thumbview.sae.folder.load_sae`) with the same reconstruction, and whether thumbview's study
(`thumbview.sae.study.run_study`) runs on its codes.

thumbview runs twice: with its own defaults, and with only the learning rate changed to
THUMBVIEW_LR (row "thumbview-lr"), to show how much of a gap the learning rate explains.

The first column compares at equal FVU: the held-out FVU target is the worse of the two final
FVUs plus 0.01, each library's time to reach it is read off its per-epoch curve (linear
interpolation in training time), and the ratio is (peer's time) / (thumbview's time): above 1
means thumbview gets there sooner.

The physical bound: a TopK step cannot avoid the dense encoder product (B x d_in x d_sae, to
choose the winners), 2 B d_in d_sae FLOPs, plus the sparse parts (about 10 B k d_in). Divided
by this machine's float32 GEMM rate, measured in the same run with the same shapes, it gives
the most tokens/s any TopK trainer could reach here; each row's share of it is printed.

Install the peers (CPU only; torch 2.13.0 first so pip keeps the local CPU build and does not
pull the multi-GB CUDA one):

    python3.11 -m venv /tmp/sae-peers-venvs/sparsify
    /tmp/sae-peers-venvs/sparsify/bin/pip install torch==2.13.0
    /tmp/sae-peers-venvs/sparsify/bin/pip install torch==2.13.0 eai-sparsify
    python3.11 -m venv /tmp/sae-peers-venvs/overcomplete
    /tmp/sae-peers-venvs/overcomplete/bin/pip install torch==2.13.0 "matplotlib<3.9" overcomplete
    # sae-lens is in thumbview's own venv (pip install sae-lens)

sparsify runs with SPARSIFY_DISABLE_TRITON=1 (its eager embedding_bag decoder; Triton needs a
GPU). overcomplete's package __init__ imports torchvision models, whose PyPI wheel does not load
beside the CPU torch; the worker imports only `overcomplete.sae` (the SAE code needs no
torchvision). A library whose interpreter or import fails is skipped and the table says why.

    .venv/bin/python benchmarks/sae_peers.py                  # the full table (12.5 min on 2 shared cores)
    .venv/bin/python benchmarks/sae_peers.py --quick          # small, for development
    .venv/bin/python benchmarks/sae_peers.py --activations acts.npy   # real (N, d_in) activations
    .venv/bin/python benchmarks/sae_peers.py --only thumbview --quick # thumbview's part only

Without --activations the activations are random-feature ones with planted sparse structure,
CLIP-sized (d_in 768): 4 d_in true unit directions with power-law firing rates (about 20
active per row, exponential magnitudes), a large shared offset (as CLIP residual streams have)
and 2% isotropic noise, so a good SAE reaches a low FVU and FVU means something.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
VENVS = Path(os.environ.get("SAE_PEERS_VENVS", "/tmp/sae-peers-venvs"))
LIBRARIES = ("thumbview", "thumbview-lr", "sae-lens", "sparsify", "overcomplete")
THUMBVIEW_LR = 2e-3  # the one other learning rate tried for thumbview (row "thumbview-lr")
EVAL_CHUNK = 1024


# ================================================================ workers (any venv)
# Everything from here to the orchestrator imports only numpy and torch at module level, so
# the same file runs as a worker inside each peer's own virtual environment.


def _peak_rss_mb() -> float:
    """VmHWM of this process (ru_maxrss would report the parent's peak after exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _epoch_batches(train, batch: int, seed: int, epoch: int):
    """The same shuffled full batches for every library: the order depends on (seed, epoch)."""
    import torch

    order = np.random.default_rng([seed, epoch]).permutation(len(train))
    for i in range(len(train) // batch):
        yield torch.from_numpy(
            np.ascontiguousarray(train[np.sort(order[i * batch : (i + 1) * batch])])
        )


def heldout_fvu(recon_fn, heldout) -> float:
    """sum ||x - recon||^2 / sum ||x - mean||^2 over the held-out rows, in float64."""
    import torch

    x_all = np.asarray(heldout, dtype=np.float64)
    total = float(((x_all - x_all.mean(0)) ** 2).sum())
    sse = 0.0
    with torch.no_grad():
        for s in range(0, len(heldout), EVAL_CHUNK):
            x = torch.from_numpy(np.array(heldout[s : s + EVAL_CHUNK], dtype=np.float32))
            sse += float((recon_fn(x).double() - x.double()).pow(2).sum())
    return sse / total


def _train_loop(spec: dict, train, heldout, step_fn, recon_fn) -> dict:
    """Epochs of `step_fn(batch)`; training time excludes the held-out FVU after each epoch."""
    curve, seconds, tokens = [], 0.0, 0
    for epoch in range(spec["epochs"]):
        start = time.perf_counter()
        for batch in _epoch_batches(train, spec["batch"], spec["seed"], epoch):
            step_fn(batch)
            tokens += len(batch)
        seconds += time.perf_counter() - start
        curve.append({"tokens": tokens, "seconds": seconds, "fvu": heldout_fvu(recon_fn, heldout)})
    return {"curve": curve, "tokens": tokens, "seconds": seconds}


def _save_params(out: Path, w_enc, b_enc, w_dec, b_dec) -> None:
    """SAELens-named parameters as float32 .npy files (every venv has numpy)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, t in (("W_enc", w_enc), ("b_enc", b_enc), ("W_dec", w_dec), ("b_dec", b_dec)):
        np.save(out / f"{name}.npy", t.detach().float().cpu().contiguous().numpy())


def worker_thumbview(spec: dict, train, heldout, out: Path) -> dict:
    """thumbview's own defaults: lr 4e-4 with warm-up, input normalisation, median b_dec."""
    from thumbview.sae.architectures import build_sae
    from thumbview.sae.folder import save_sae
    from thumbview.sae.model import SaeConfig
    from thumbview.sae.train import SaeTrainer, TrainConfig, input_scale

    expansion = spec.get("expansion_override") or spec["d_sae"] // spec["d_in"]
    cfg = SaeConfig(d_in=spec["d_in"], expansion_factor=expansion, arch="topk", k=spec["k"])
    sae = build_sae(cfg, seed=spec["seed"])
    train_cfg = TrainConfig(batch_size=spec["batch"], epochs=spec["epochs"])
    if spec.get("lr"):
        train_cfg = TrainConfig(batch_size=spec["batch"], epochs=spec["epochs"], lr=spec["lr"])
    trainer = SaeTrainer(sae, train_cfg)
    trainer.total_steps = (len(train) // spec["batch"]) * spec["epochs"]
    trainer.activation_scale = input_scale(train, np.arange(len(train)), spec["seed"])

    def step(batch):
        if trainer.steps_done == 0:
            sae.init_b_dec_(batch * trainer.activation_scale)
        trainer.step(batch)

    def recon(x):
        return sae(x * trainer.activation_scale).recon / trainer.activation_scale

    result = _train_loop(spec, train, heldout, step, recon)
    sae.fold_input_scale_(trainer.activation_scale)
    save_sae(sae, out / "native", {"features": "sae-peers"})
    _save_params(out / "params", sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    return {
        **result,
        "settings": f"Adam lr {trainer.cfg.lr:g}, warm-up {trainer.cfg.warmup_steps} "
        f"(capped at 10% of steps), inputs scaled to mean sq. norm d_in, d_sae {cfg.d_sae}",
    }


def worker_sae_lens(spec: dict, train, heldout, out: Path) -> dict:
    """SAELens' TopKTrainingSAE with its SAETrainer defaults (Adam 3e-4, constant schedule)."""
    import sae_lens
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    cfg = TopKTrainingSAEConfig(d_in=spec["d_in"], d_sae=spec["d_sae"], k=spec["k"])
    sae = TopKTrainingSAE(cfg)
    tokens = (len(train) // spec["batch"]) * spec["batch"] * spec["epochs"]
    tcfg = SAETrainerConfig(
        total_training_samples=tokens, train_batch_size_samples=spec["batch"], lr_end=3e-4 / 10
    )  # what LanguageModelSAERunnerConfig fills in
    trainer = SAETrainer(tcfg, sae, data_provider=iter(()))

    def step(batch):
        trainer.step(batch)
        trainer.n_training_steps += 1

    def recon(x):
        return sae(x)

    result = _train_loop(spec, train, heldout, step, recon)
    sae.save_inference_model(out / "native")  # SAELens' own layout: read by thumbview as is
    w_norm = sae.W_dec.norm(dim=-1)  # rescale_acts_by_decoder_norm, folded as SAELens does
    _save_params(
        out / "params",
        sae.W_enc * w_norm,
        sae.b_enc * w_norm,
        sae.W_dec / w_norm[:, None],
        sae.b_dec,
    )
    return {
        **result,
        "version": sae_lens.__version__,
        "settings": f"Adam lr {tcfg.lr:g} {tcfg.lr_scheduler_name}, aux coef "
        f"{cfg.aux_loss_coefficient:g}, grad clip 1, decoder init norm {cfg.decoder_init_norm}",
    }


def worker_sparsify(spec: dict, train, heldout, out: Path) -> dict:
    """sparsify's SparseCoder with its Trainer's default optimiser: Signum + schedule-free."""
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    from importlib.metadata import version

    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    cfg = SparseCoderConfig(num_latents=spec["d_sae"], k=spec["k"])
    sae = SparseCoder(spec["d_in"], cfg)
    lr = 5e-3 / (sae.num_latents / 2**14) ** 0.5  # sparsify.trainer's default for "signum"
    opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": lr}]), momentum=0.95)
    opt.train()
    state = {"step": 0}

    def step(batch):  # the body of sparsify.trainer.Trainer.fit for loss_fn="fvu", auxk_alpha=0
        if state["step"] == 0:
            sae.b_dec.data = batch.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        sae(batch).fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        state["step"] += 1

    def recon(x):
        opt.eval()  # schedule-free: evaluate the averaged weights, as sparsify saves them
        try:
            return sae(x).sae_out
        finally:
            opt.train()

    result = _train_loop(spec, train, heldout, step, recon)
    opt.eval()
    sae.save_to_disk(out / "native")
    _save_params(out / "params", sae.encoder.weight.T, sae.encoder.bias, sae.W_dec, sae.b_dec)
    return {
        **result,
        "version": version("eai-sparsify"),
        "settings": f"SignSGD lr {lr:.2e} + ScheduleFree (momentum 0.95), b_dec = batch mean, "
        "AuxK off (its default auxk_alpha 0), eager decoder",
    }


def _import_overcomplete_sae():
    """`overcomplete.sae` without the package __init__ (which imports torchvision models)."""
    import importlib.util
    import types

    spec = importlib.util.find_spec("overcomplete")
    if spec is None:
        raise ImportError("overcomplete is not installed")
    pkg = types.ModuleType("overcomplete")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("overcomplete", pkg)
    import overcomplete.sae

    return overcomplete.sae


def worker_overcomplete(spec: dict, train, heldout, out: Path) -> dict:
    """overcomplete's TopKSAE as its README trains it: Adam 5e-4, MSE, grad clip 1."""
    from importlib.metadata import version

    import torch

    oc = _import_overcomplete_sae()
    sae = oc.TopKSAE(spec["d_in"], nb_concepts=spec["d_sae"], top_k=spec["k"])
    opt = torch.optim.Adam(sae.parameters(), lr=5e-4)

    def step(batch):  # the body of overcomplete.sae.train_sae (monitoring off)
        opt.zero_grad()
        _, _, x_hat = sae(batch)
        (batch - x_hat).square().mean().backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()

    def recon(x):
        sae.eval()
        try:
            return sae(x)[2]
        finally:
            sae.train()

    result = _train_loop(spec, train, heldout, step, recon)
    sae.eval()
    (lin,) = [m for m in sae.encoder.modules() if isinstance(m, torch.nn.Linear)]  # + Identity
    _save_params(
        out / "params", lin.weight.T, lin.bias, sae.get_dictionary(), torch.zeros(spec["d_in"])
    )
    return {
        **result,
        "version": version("overcomplete"),
        "settings": "Adam lr 5e-4, MSE loss, grad clip 1, default linear encoder, "
        "no decoder bias (README example)",
    }


def worker_thumbview_lr(spec: dict, train, heldout, out: Path) -> dict:
    """thumbview's defaults but the learning rate, THUMBVIEW_LR (what closes the FVU gap?)."""
    return worker_thumbview({**spec, "lr": THUMBVIEW_LR}, train, heldout, out)


WORKERS = {
    "thumbview": worker_thumbview,
    "thumbview-lr": worker_thumbview_lr,
    "sae-lens": worker_sae_lens,
    "sparsify": worker_sparsify,
    "overcomplete": worker_overcomplete,
}


def run_worker(name: str, work: Path) -> None:
    import torch

    spec = json.loads((work / "spec.json").read_text())
    torch.manual_seed(spec["seed"])
    train = np.load(work / "train.npy", mmap_mode="r")
    heldout = np.load(work / "heldout.npy", mmap_mode="r")
    out = work / spec.get("out_name", name)
    result = WORKERS[name](spec, train, heldout, out)
    result.update(
        peak_rss_mb=_peak_rss_mb(), threads=torch.get_num_threads(), torch=torch.__version__
    )
    (out / "result.json").write_text(json.dumps(result, indent=1))


# ================================================================ orchestrator (main venv)


def planted_activations(n: int, d_in: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, d_in) float32 activations with planted sparse structure, and (N,) planted views.

    x = sum_j a_j f_j + offset + noise over 4 d_in unit directions f_j; feature j fires with a
    power-law rate (about 20 per row), with Exp(1) magnitude. log10 views = 5 + 0.5 [feature
    n_true/30 fires] - 0.5 [feature n_true/15 fires] + N(0, 0.5): something for the study.
    """
    rng = np.random.default_rng(seed)
    n_true = 4 * d_in
    dirs = rng.standard_normal((n_true, d_in)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    rate = np.arange(1, n_true + 1, dtype=np.float64) ** -0.6
    rate = np.minimum(rate * 20 / rate.sum(), 0.5)
    marked = [n_true // 30, n_true // 15]  # features 102 and 204 at d_in 768
    offset = 3.0 * rng.standard_normal(d_in).astype(np.float32) / np.sqrt(d_in) * 4
    x = np.empty((n, d_in), np.float32)
    planted = np.zeros((n, 2), bool)
    for s in range(0, n, 2048):
        m = min(2048, n - s)
        fires = rng.random((m, n_true)) < rate
        a = (rng.exponential(1.0, (m, n_true)) * fires).astype(np.float32)
        x[s : s + m] = a @ dirs + offset
        planted[s : s + m] = fires[:, marked]
    signal_var = x.var(0).sum()
    x += rng.standard_normal(x.shape).astype(np.float32) * np.sqrt(0.02 * signal_var / d_in)
    views = 10 ** (5 + 0.5 * planted[:, 0] - 0.5 * planted[:, 1] + rng.normal(0, 0.5, n))
    return x, views


def gemm_gflops(batch: int, d_in: int, d_sae: int, reps: int = 5) -> float:
    """Median float32 GEMM rate of this machine on the encoder's own shapes."""
    import torch

    a, b = torch.randn(batch, d_in), torch.randn(d_in, d_sae)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * batch * d_in * d_sae / statistics.median(times) / 1e9


def step_flops(batch: int, d_in: int, d_sae: int, k: int) -> float:
    """Dense encoder product plus the sparse k-winner work (decode, its two gradients, encoder
    gradients for the winners): the least matmul work of one TopK training step."""
    return 2 * batch * d_in * d_sae + 10 * batch * k * d_in


def interpreter(name: str) -> list[str] | None:
    """The Python to run a library's worker with, or None when it is not installed."""
    if name.startswith("thumbview") or name == "sae-lens":
        return [sys.executable]
    python = VENVS / name / "bin" / "python"
    return [str(python)] if python.exists() else None


def launch(name: str, work: Path, timeout: float) -> dict:
    """Run one worker in its own process; its result, or why it has none."""
    python = interpreter(name)
    if python is None:
        return {"skipped": f"no venv at {VENVS / name} (see the install steps)"}
    env = {**os.environ, "SPARSIFY_DISABLE_TRITON": "1", "PYTHONPATH": str(HERE.parents[1] / "src")}
    cmd = [*python, str(HERE), "--worker", name, "--work", str(work)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"did not finish in {timeout:.0f} s"}
    spec = json.loads((work / "spec.json").read_text())
    result_file = work / spec.get("out_name", name) / "result.json"
    if proc.returncode != 0 or not result_file.exists():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": f"worker failed: {last[:160]}"}
    return json.loads(result_file.read_text())


def _params_to_folder(params: Path, folder: Path, k: int) -> Path:
    """A peer's parameters written in the SAELens layout (the conversion any user would do)."""
    from safetensors.numpy import save_file

    tensors = {n: np.load(params / f"{n}.npy") for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    d_in, d_sae = tensors["W_enc"].shape
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    cfg = {
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "architecture": "topk",
        "k": k,
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "dtype": "float32",
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def study_config():
    from thumbview.sae.config import StudyConfig

    return StudyConfig(
        top_k=20, min_active=10, n_extreme=5, heldout_group=5, n_perm=2000, n_shuffles=19, n_boot=0
    )


def read_back(
    name: str, out: Path, rows: tuple[np.ndarray, ...], views: np.ndarray, k: int
) -> dict:
    """Load a library's SAE through thumbview's SAELens loader: its held-out FVU there, dead
    latents on the held-out rows, and the study on its codes of every row (`rows` is
    (held-out, training); `views` follow that order)."""
    heldout = rows[0]
    from thumbview.sae.folder import encode_sparse, load_sae
    from thumbview.sae.study import run_study

    native = out / "native"
    if name.startswith("thumbview") or name == "sae-lens":  # they write the SAELens layout
        folder, how = native, "own folder"
    else:
        folder, how = _params_to_folder(out / "params", out / "saelens-layout", k), "converted"
    try:
        sae = load_sae(folder).eval()
    except Exception as e:  # noqa: BLE001 - the table reports any failure
        return {"interop": f"no ({type(e).__name__}: {str(e)[:80]})"}
    fvu = heldout_fvu(lambda x: sae.decode(sae.encode(x)), heldout)
    codes = encode_sparse(sae, np.ascontiguousarray(heldout))
    dead = 1.0 - len(np.unique(codes.indices)) / codes.shape[1]
    try:
        all_codes = encode_sparse(sae, np.ascontiguousarray(np.concatenate(rows)))
        res = run_study(all_codes, views, study_config())
        study = f"runs ({len(res.features)} latents tested)"
    except Exception as e:  # noqa: BLE001
        study = f"fails ({type(e).__name__}: {str(e)[:60]})"
    return {"interop": f"yes, {how}", "fvu_via_thumbview": fvu, "dead": dead, "study": study}


def time_to_fvu(curve: list[dict], target: float) -> float:
    """Training seconds until held-out FVU <= target, linear between epochs (inf: never)."""
    prev_s, prev_f = 0.0, None
    for point in curve:
        if point["fvu"] <= target:
            if prev_f is None or prev_f == point["fvu"]:
                return point["seconds"]
            frac = (prev_f - target) / (prev_f - point["fvu"])
            return prev_s + frac * (point["seconds"] - prev_s)
        prev_s, prev_f = point["seconds"], point["fvu"]
    return float("inf")


def equal_fvu_ratio(tv: dict, peer: dict) -> float:
    """peer's time / thumbview's time to the same held-out FVU (the worse final FVU + 0.01)."""
    target = max(tv["curve"][-1]["fvu"], peer["curve"][-1]["fvu"]) + 0.01
    return time_to_fvu(peer["curve"], target) / time_to_fvu(tv["curve"], target)


def _median_ms(fn, reps: int = 3) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def profile_thumbview(spec: dict, train: np.ndarray) -> dict[str, float]:
    """Milliseconds per part of one `SaeTrainer.step` (medians; the parts are timed apart)."""
    import torch
    import torch.nn.functional as F

    from thumbview.sae.architectures import build_sae
    from thumbview.sae.model import SaeConfig
    from thumbview.sae.train import SaeTrainer, TrainConfig

    cfg = SaeConfig(
        d_in=spec["d_in"], expansion_factor=spec["d_sae"] // spec["d_in"], arch="topk", k=spec["k"]
    )
    sae = build_sae(cfg, seed=0)
    trainer = SaeTrainer(sae, TrainConfig(batch_size=spec["batch"], warmup_steps=1))
    x = torch.from_numpy(np.ascontiguousarray(train[: spec["batch"]]))
    sae.init_b_dec_(x)

    def fwd_bwd():
        trainer.optimizer.zero_grad(set_to_none=True)
        sae(x).loss.backward()

    step = _median_ms(lambda: trainer.step(x))
    fwd_bwd()
    with torch.no_grad():
        x_c = x - sae.b_dec
        enc = _median_ms(lambda: torch.addmm(sae.b_enc, x_c, sae.W_enc))
        pre = torch.addmm(sae.b_enc, x_c, sae.W_enc)
        topk = _median_ms(lambda: F.relu(pre).topk(spec["k"], dim=-1, sorted=False))
    fwd = _median_ms(lambda: sae(x))
    both = _median_ms(fwd_bwd)
    opt = _median_ms(trainer.optimizer.step)
    constraint = _median_ms(lambda: (sae.remove_parallel_decoder_grad_(), sae.normalize_decoder_()))
    trainer.since_fired.fill_(cfg.dead_after)
    dead_step = _median_ms(lambda: trainer.step(x))
    return {
        "whole step": step,
        "encoder matmul (dense, picks the winners)": enc,
        "top-k": topk,
        "rest of forward (winners' codes, sparse decode, loss)": max(fwd - enc - topk, 0.0),
        "backward": both - fwd,
        "optimizer (Adam)": opt,
        "decoder unit norm (grad projection + renorm)": constraint,
        "bookkeeping (firing counters, metrics)": max(step - both - opt - constraint, 0.0),
        "AuxK, extra when every latent is dead (not in these runs)": dead_step - step,
    }


def load_activations(args) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(train, heldout, views of [heldout; train], description): --activations or planted."""
    n = args.train_rows + args.heldout_rows
    if args.activations:
        x = np.load(args.activations, mmap_mode="r")
        if x.ndim != 2:
            sys.exit(f"--activations must hold an (N, d_in) array, got shape {x.shape}")
        rng = np.random.default_rng(args.seed)
        rows = rng.permutation(len(x))[: min(n, len(x))]
        x = np.asarray(x[np.sort(rows)], dtype=np.float32)
        views = 10 ** rng.normal(5, 0.5, len(x))  # no views come with the file: a null study
        what = f"{args.activations} ({len(x):,} rows of {x.shape[1]})"
    else:
        x, views = planted_activations(n, args.d_in, args.seed)
        what = f"planted sparse structure, d_in {args.d_in} (see the docstring)"
    n_held = max(2, int(len(x) * args.heldout_rows / n))
    return x[n_held:], x[:n_held], views, what


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return "never" if r == float("inf") else f"{r:.2f}"


def print_table(results: dict, spec: dict, bound_tps: float) -> None:
    tv = results.get("thumbview", {})
    peers = {n: r for n, r in results.items() if not n.startswith("thumbview") and "curve" in r}
    ratios = {n: equal_fvu_ratio(tv, r) for n, r in peers.items() if "curve" in tv}
    for name, r in results.items():  # thumbview rows: against the peer that is fastest there
        if name.startswith("thumbview") and "curve" in r and peers:
            ratios[name] = min(equal_fvu_ratio(r, p) for p in peers.values())
    print(
        "| library | thumbview ÷ it at equal FVU | tokens/s | share of GEMM bound | "
        "peak RSS MB | held-out FVU | dead latents | reads via load_sae (FVU there) | "
        "thumbview study on its codes | settings |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---|---|")
    for name, r in results.items():
        if "skipped" in r:
            print(f"| {name} | - | - | - | - | - | - | - | - | skipped: {r['skipped']} |")
            continue
        ratio = ratios.get(name)
        shown = fmt_ratio(ratio) if name in peers else f"**{fmt_ratio(ratio)}** (vs fastest)"
        tps = r["tokens"] / r["seconds"]
        via = r.get("interop", "-")
        if "fvu_via_thumbview" in r:
            via += f" ({r['fvu_via_thumbview']:.3f})"
        label = f"{name} {r.get('version', '')}".strip()
        dead = f"{r['dead']:.1%}" if "dead" in r else "-"
        print(
            f"| {label} | {shown} "
            f"| {tps:,.0f} | {tps / bound_tps:.0%} | {r['peak_rss_mb']:,.0f} "
            f"| {r['curve'][-1]['fvu']:.3f} | {dead} | {via} | {r.get('study', '-')} "
            f"| {r.get('settings', '')} |"
        )


def print_curves(results: dict) -> None:
    names = [n for n, r in results.items() if "curve" in r]
    print("\nHeld-out FVU after each epoch (training seconds so far):\n")
    print("| epoch | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    for e in range(max(len(results[n]["curve"]) for n in names)):
        cells = [
            f"{results[n]['curve'][e]['fvu']:.3f} ({results[n]['curve'][e]['seconds']:.0f} s)"
            for n in names
        ]
        print(f"| {e + 1} | " + " | ".join(cells) + " |")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=LIBRARIES, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--activations", help="an (N, d_in) .npy of real activations")
    p.add_argument("--only", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    p.add_argument("--quick", action="store_true", help="small sizes, for development")
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--train-rows", type=int, default=4096)
    p.add_argument("--heldout-rows", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--timeout", type=float, default=900, help="seconds per library")
    p.add_argument("--json", type=Path, help="also write every figure here")
    args = p.parse_args(argv)
    if args.quick:
        args.d_in, args.expansion, args.batch = 256, 8, 512
        args.train_rows, args.heldout_rows, args.epochs = 4096, 1024, 3
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.work)
        return {}
    import torch

    train, heldout, views, what = load_activations(args)
    d_in = train.shape[1]
    spec = {
        "d_in": d_in,
        "d_sae": d_in * args.expansion,
        "k": args.k,
        "batch": args.batch,
        "epochs": args.epochs,
        "seed": args.seed,
    }
    gflops = gemm_gflops(args.batch, d_in, spec["d_sae"])
    bound_tps = args.batch / (step_flops(args.batch, d_in, spec["d_sae"], args.k) / (gflops * 1e9))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="sae-peers-") as tmp:
        work = Path(tmp)
        np.save(work / "train.npy", train)
        np.save(work / "heldout.npy", heldout)
        (work / "spec.json").write_text(json.dumps(spec))
        for name in args.only:
            print(f"training {name} ...", file=sys.stderr, flush=True)
            results[name] = launch(name, work, args.timeout)
            if "curve" in results[name]:
                results[name].update(read_back(name, work / name, (heldout, train), views, args.k))
    gflops_after = gemm_gflops(args.batch, d_in, spec["d_sae"])
    tokens = (len(train) // args.batch) * args.batch * args.epochs
    print(
        f"\n{what}; {len(train):,} training rows x {args.epochs} epochs = {tokens:,} tokens, "
        f"{len(heldout):,} held out; d_sae {spec['d_sae']:,}, k {args.k}, batch {args.batch}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print_table(results, spec, bound_tps)
    print_curves(results)
    print(
        f"\nGEMM rate ({args.batch}x{d_in} @ {d_in}x{spec['d_sae']} float32): {gflops:.1f} "
        f"GFLOP/s before the runs, {gflops_after:.1f} after; one step's least matmul work "
        f"{step_flops(args.batch, d_in, spec['d_sae'], args.k) / 1e9:.2f} GFLOP -> bound "
        f"{bound_tps:,.0f} tokens/s (before-run rate)"
    )
    report = {
        "spec": spec,
        "data": what,
        "gemm_gflops": [gflops, gflops_after],
        "bound_tokens_per_s": bound_tps,
        "results": results,
    }
    if "thumbview" in args.only and not args.no_profile:
        prof = profile_thumbview(spec, train)
        report["profile_ms"] = prof
        print("\nWhere thumbview's step goes (ms, medians of 3):\n")
        print("| part | ms | share |\n|---|---:|---:|")
        for part, ms in prof.items():
            print(f"| {part} | {ms:.0f} | {ms / prof['whole step']:.0%} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
