"""Every artifact a user can be handed survives every edit of every field (issue 30).

For each kind of folder (predictor heads ridge, mlp, gbm, stacked, with a training range and
a pairwise model; a fine-tuned network with its training range; SAEs of both architectures in thumbview's layout and
in SAELens'; a bot), a freshly written tiny folder is damaged one field or tensor at a time
and loaded the way the commands load it. The mutations are derived from the folder itself:
every JSON file under it, every field in those files (lists: their first and last item),
every tensor of every safetensors file, so a field added tomorrow is mutated without editing
this test. Each outcome must be one of

- a one-line user error (what the CLI prints: ValueError, FileNotFoundError) naming the
  file that was edited (its folder and its name appear in the message);
- a load whose observable results (predictions, intervals, range warnings, pairwise fold
  predictions; SAE latents and activation source; bot config and adapter) equal the
  original's exactly;
- only for edits that keep a number a number of the same kind (a float made negative or
  huge, a weight tensor reversed or set to 10^6): a load that works and gives finite
  results; such a folder is a different model, not a damaged one, and nothing in a file
  can tell them apart.

Anything else fails: a traceback (TypeError, IndexError, RecursionError...), a message
without the file, a hang (each case gets 10 s), or an allocation beyond the worker's address
space limit (`RLIMIT_AS` = its size after start-up + 2 GiB: a config that makes a loader
allocate 40 GB fails here at once). The cases run in two worker processes (`__main__`
below), each building its kinds' folders; integer tensors that are index-like are also set
to 0, -1 and 10^6, and 1-d tensors whose values are sorted are also reversed (their order
means something: quantile levels).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
LEGACY_BOT = ROOT / "tests" / "data" / "legacy" / "d7022a0" / "bot"
WORKERS = {
    "a": ["ridge", "gbm", "stacked", "sae-topk", "sae-relu-l1"],
    "b": ["mlp", "finetuned", "sae-topk-saelens", "sae-relu-l1-saelens", "bot"],
}
CASE_SECONDS = 10
MEMORY_HEADROOM = 2 << 30
MAX_LIST_ITEMS = 2  # a list's first and last item are mutated (a few thousand ids are alike)


# ----- the mutations, derived from a folder --------------------------------------------------
def json_paths(value, path=()):
    """Every path into a JSON value (dict keys; a list's first and last index), root excluded."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        idx = sorted({0, len(value) - 1}) if value else []
        items = [(i, value[i]) for i in idx[:MAX_LIST_ITEMS]]
    else:
        return
    for key, child in items:
        yield (*path, key)
        yield from json_paths(child, (*path, key))


def json_mutations(value):
    """(name, new value or MISSING, strict) for one JSON value. `strict`: the load must fail
    or be unchanged; otherwise (a float's value changed) a working, finite load is allowed."""
    out = [("missing", MISSING, True), ("nested", [value], True)]
    out.append(("wrong type", 7 if isinstance(value, str) else "x", True))
    if isinstance(value, bool):
        return out
    if isinstance(value, int):
        out += [("negative", -abs(value) - 1, True), ("huge", 10**12, True),
                ("bool", True, True), ("nan", math.nan, True)]  # fmt: skip
    elif isinstance(value, float):
        out += [("negative", -abs(value) - 1.5, False), ("huge", 1e300, False),
                ("nan", math.nan, True)]  # fmt: skip
    elif isinstance(value, dict | list) and value:
        out.append(("emptied", type(value)(), True))
    return out


MISSING = object()


def set_path(doc, path, new):
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if new is MISSING:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new


def tensor_mutations(name: str, a: np.ndarray):
    """(name, new array, strict) for one tensor of a safetensors file."""
    out = []
    if a.ndim:
        out.append(("shape", a[:-1] if a.shape[0] > 1 else np.concatenate([a, a]), True))
    out.append(("dtype", a.astype(np.int32 if a.dtype.kind == "f" else np.float64), True))
    if a.size:
        if a.dtype.kind == "f":
            nan = a.copy()
            nan.flat[0] = np.nan
            out.append(("nan", nan, True))
        for label, v in (("zero", 0), ("-1", -1), ("1e6", 10**6)):
            b = a.copy()
            b.flat[0] = v
            index_like = a.dtype.kind in "iu" or _whole(a)
            out.append((f"element {label}", b, index_like))
        if a.ndim == 1 and len(a) > 2 and _sorted(a):
            out.append(("reversed", a[::-1].copy(), True))
    return out


def _whole(a: np.ndarray) -> bool:
    """Float arrays of varied small whole numbers: indices stored as floats (GBM nodes), not
    a scale of ones or a mean of zeros."""
    whole = bool(np.all(a == np.round(a))) and float(np.abs(a).max()) < 1e7
    return a.dtype.kind == "f" and whole and len(np.unique(a)) > 1


def _sorted(a: np.ndarray) -> bool:
    d = np.diff(a.astype(np.float64))
    return bool(np.all(d > 0) or np.all(d < 0))


# Every JSON file of a folder is mutated (training_range.json and pairwise.json included).
NOT_HERE: set[str] = set()


def _files(folder: Path, pattern: str) -> list[Path]:
    """The folder's files matching `pattern`, one per kind: `pairwise/fold-1/config.json` is
    the same file as `pairwise/fold-0/config.json`, so only the first fold is mutated."""
    seen, out = set(), []
    for path in sorted(folder.rglob(pattern)):
        rel = path.relative_to(folder).as_posix()
        kind = re.sub(r"\d+", "N", rel)
        if rel not in NOT_HERE and kind not in seen:
            seen.add(kind)
            out.append(path)
    return out


def cases(folder: Path):
    """Every (file, description, apply(copy), strict) the folder's own contents give."""
    for path in _files(folder, "*.json"):
        rel = path.relative_to(folder)
        doc = json.loads(path.read_text(encoding="utf-8"))
        for field in json_paths(doc):
            old = _get(doc, field)
            for label, new, strict in json_mutations(old):
                yield rel, f"{'.'.join(map(str, field))}: {label}", _json_edit(field, new), strict
    for path in _files(folder, "*.safetensors"):
        rel = path.relative_to(folder)
        from safetensors.numpy import load_file

        try:
            tensors = load_file(path)
        except (TypeError, ValueError):  # bf16 has no numpy dtype: not written by thumbview
            continue
        kinds = {re.sub(r"\d+", "N", name): name for name in sorted(tensors, reverse=True)}
        for name in sorted(kinds.values()):  # one tensor per kind: layers.0 stands for layers.N
            a = tensors[name]
            for label, new, strict in tensor_mutations(name, a):
                yield rel, f"{name}: {label}", _tensor_edit(name, new), strict


def _get(doc, path):
    for key in path:
        doc = doc[key]
    return doc


def _json_edit(field, new):
    def apply(path: Path) -> None:
        doc = json.loads(path.read_text(encoding="utf-8"))
        set_path(doc, field, copy.deepcopy(new) if new is not MISSING else MISSING)
        path.write_text(json.dumps(doc), encoding="utf-8")  # NaN is written as NaN

    return apply


def _tensor_edit(name, new):
    def apply(path: Path) -> None:
        from safetensors.numpy import load_file, save_file

        tensors = load_file(path)
        tensors[name] = np.ascontiguousarray(new)
        save_file(tensors, path)

    return apply


# ----- the folders and how each kind is loaded ------------------------------------------------
VISUAL_OPTIONS = {"ocr": False, "faces": False, "workers": 1}


def build_predictor(root: Path, head: str) -> Path:
    """A visual-only predictor on planted random features, saved as `train` saves one, with
    encoders.json; the ridge one also has a training range and a pairwise model."""
    from thumbview.embed.visual import VisualEncoder
    from thumbview.predict.drift import TrainingRange
    from thumbview.predict.model import PredictorConfig, ViewPredictor
    from thumbview.predict.pairwise import PairwiseModel

    encoder = VisualEncoder(**VISUAL_OPTIONS)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, encoder.dim))  # (N, D)
    y = 4 + X[:, 0] - 0.5 * X[:, 1] + rng.normal(0, 0.3, 90)
    channels = np.array([f"c{i % 9}" for i in range(90)], dtype=object)
    mlp = {"hidden": 6, "max_epochs": 3} if head == "mlp" else None
    config = PredictorConfig(encoders=("visual",), head=head, cv_folds=3, mlp=mlp)
    out = root / head
    ViewPredictor(config).fit({"visual": X}, y, channels).save(out)
    if head == "ridge":
        names = {"visual": encoder.feature_names()}
        TrainingRange.fit(y, {"visual": X}, names=names, groups=channels).save(out)
        PairwiseModel().fit(config, {"visual": X}, y, channels).save(out)
        _write_card(out, y, channels, rng)
    spec = {"visual": {"options": VISUAL_OPTIONS, "spec": encoder.spec()}}
    (out / "encoders.json").write_text(json.dumps(spec), encoding="utf-8")
    return out


def _write_card(out: Path, y, channels, rng) -> None:
    """card.json as `train` writes it: training medians (dates, channel sizes) and a held-out
    verdict on the last 30 rows."""

    import pandas as pd

    from thumbview.predict.card import write_card

    days = pd.to_datetime("2010-01-01") + pd.to_timedelta(rng.integers(0, 2000, len(y)), "D")
    table = pd.DataFrame({"published_at": days.strftime("%Y-%m-%dT00:00:00Z"),
                          "channel_id": channels})  # fmt: skip
    dataset = SimpleNamespace(table=table, channels=channels)
    train, test = np.arange(60), np.arange(60, len(y))
    write_card(out, dataset, train, test, y, y[test] + rng.normal(0, 0.5, len(test)),
               float(np.median(y[train])), True)  # fmt: skip


def observe_predictor(folder: Path, blocks: dict):
    from thumbview.inference.predictor import LoadedPredictor

    loaded = LoadedPredictor.load(folder)
    (lo, hi), pred = loaded.intervals(blocks), loaded.predict(blocks)
    out = {"pred": pred, "lo": lo, "hi": hi, "notes": json.dumps(loaded.notes().to_json_dict())}
    if loaded.training_range is not None:
        out["range"] = loaded.training_range.row_messages(blocks)
    if (pairwise := loaded.pairwise) is not None:
        out["pairwise"] = pairwise.fold_predictions(blocks)
        out["calibration"] = json.dumps(pairwise.calibration_.to_json_dict(), sort_keys=True)
    return out


def build_finetuned(root: Path) -> Path:
    """An untrained test-vit network (image only), calibrated and saved as `finetune` saves,
    with the pairwise calibration of its held-out predictions (pairwise.json, no folds) and
    the training range of its embeddings (training_range.json + .safetensors)."""
    import torch

    from thumbview.finetune.config import FinetuneConfig
    from thumbview.finetune.model import FinetunedPredictor
    from thumbview.finetune.network import build_network
    from thumbview.finetune.range import fit_range, save_range
    from thumbview.finetune.report import fit_pairwise
    from thumbview.predict.drift import MIN_NOVELTY_ROWS

    torch.manual_seed(0)
    config = FinetuneConfig(backbone="test-vit", title="none", epochs=1, workers=0)
    net, arch = build_network(config)
    model = FinetunedPredictor(config).set_fitted(net, arch, 4.0, 0.5, 4.0, 50)
    model.calibrate(np.linspace(3, 5, 40), np.linspace(3.2, 4.8, 40) ** 1.01)
    model.history_, model.val_metrics_ = [[1, 0.5, 0.6]], {"spearman": 0.1, "n": 40}
    out = model.save(root / "finetuned")
    spec = {"pixels": {"options": {"image_size": arch["image_size"]}, "spec": {}}}
    (out / "encoders.json").write_text(json.dumps(spec), encoding="utf-8")
    rng = np.random.default_rng(2)
    y, channels = 4 + rng.normal(0, 0.5, 60), np.array([f"c{i % 8}" for i in range(60)])
    held = SimpleNamespace(channels=channels)  # held-out rows: all 60, predictions near y
    fit_pairwise(out, held, np.arange(60), y + rng.normal(0, 0.3, 60), y)
    assert (out / "pairwise" / "pairwise.json").is_file()
    # the range of its embeddings on 200 held-out rows (`finetune.range`), as finetune saves it
    n = MIN_NOVELTY_ROWS
    pixels = rng.integers(0, 255, (n, 3 * arch["image_size"] ** 2)).astype(np.float32)
    groups = np.array([f"c{i % 10}" for i in range(n)])
    save_range(fit_range(model, [{"pixels": pixels}], 4 + rng.normal(0, 0.5, n), groups), out)
    assert (out / "training_range.safetensors").is_file()
    return out


def build_sae(root: Path, arch: str, saelens: bool) -> Path:
    """A random SAE of `arch` saved by `save_sae`; the SAELens variant keeps SAELens' keys only."""
    from thumbview.sae.architectures import build_sae as build
    from thumbview.sae.config import sae_config
    from thumbview.sae.folder import save_sae

    extra = {"k": 3} if arch == "topk" else {}
    sae = build(sae_config(arch, d_in=6, expansion_factor=2, **extra), seed=0)
    out = root / f"sae-{arch}{'-saelens' if saelens else ''}"
    save_sae(sae, out, {"features": "visual"})
    if saelens:
        cfg = json.loads((out / "cfg.json").read_text())
        del cfg["thumbview"]
        (out / "cfg.json").write_text(json.dumps(cfg))
    return out


def observe_sae(folder: Path, x):
    import torch

    from thumbview.sae.folder import load_sae, read_activation_source

    sae = load_sae(folder)
    with torch.no_grad():
        z = sae.encode(x)
        recon = sae.decode(z)
    sizes = (sae.cfg.arch, sae.cfg.d_in, sae.cfg.d_sae, getattr(sae.cfg, "k", None))
    source = repr(read_activation_source(folder))
    return {"z": z.numpy(), "recon": recon.numpy(), "source": source, "sizes": sizes}


def build_bot(root: Path) -> Path:
    """The legacy bot folder (written by `bot train` at d7022a0; today's code loads it)."""
    return Path(shutil.copytree(LEGACY_BOT, root / "bot"))


def observe_bot(folder: Path, expected_shapes: dict):
    """`LoadedBot.load` up to the base model: bot.json and the LoRA checked (`read_bot`), the
    adapter's keys and shapes compared as `Policy.load_lora` does with the base's adapter.
    Observed: what generation reads (base, sampling settings, LoRA rank and weights); the
    training settings matter to a resumed run only (`bot train --resume` checks them)."""
    from thumbview.bot.folder import BotConfig, read_bot
    from thumbview.bot.policy import LORA_FILE, read_tensors, tensor_mismatch
    from thumbview.bot.rl import BotError

    meta = read_bot(folder)
    config = BotConfig.from_dict(meta["config"])
    path = folder / LORA_FILE
    state = {k.removeprefix("unet."): v for k, v in read_tensors(path, "LoRA").items()}
    if problem := tensor_mismatch(state, expected_shapes):
        raise BotError(f"{path} does not fit this base model and LoRA rank ({problem})")
    used = (meta["base"], repr(config.sample), config.lora_rank)
    return {"used": used, **{k: v.numpy() for k, v in state.items()}}


def _width(folder: Path) -> int:
    return json.loads((folder / "config.json").read_text())["block_dims"]["visual"]


def kinds(root: Path, names: list[str]):
    """{kind: (folder, observe(folder))} for the named kinds, each folder freshly written."""
    import torch

    rng = np.random.default_rng(1)
    out = {}
    for name in names:
        if name in ("ridge", "mlp", "gbm", "stacked"):
            folder = build_predictor(root, name)
            blocks = {"visual": rng.normal(size=(7, _width(folder))) * 2}
            out[name] = (folder, lambda f, b=blocks: observe_predictor(f, b))
        elif name == "finetuned":
            blocks = {"pixels": rng.integers(0, 255, (3, 3 * 32 * 32)).astype(np.uint8)}
            out[name] = (build_finetuned(root), lambda f, b=blocks: observe_predictor(f, b))
        elif name.startswith("sae-"):
            arch = "topk" if name.startswith("sae-topk") else "relu-l1"
            x = torch.from_numpy(rng.normal(size=(5, 6)).astype(np.float32))
            folder = build_sae(root, arch, saelens=name.endswith("saelens"))
            out[name] = (folder, lambda f, x=x: observe_sae(f, x))
        elif name == "bot":
            from safetensors.numpy import load_file

            folder = build_bot(root)
            lora = load_file(folder / "pytorch_lora_weights.safetensors")
            shapes = {k.removeprefix("unet."): v.shape for k, v in lora.items()}
            out[name] = (folder, lambda f, s=shapes: observe_bot(f, s))
    return out


# ----- judging one case ------------------------------------------------------------------------
class CaseTimeout(BaseException):
    """A case ran past CASE_SECONDS (raised by SIGALRM; BaseException so no loader eats it)."""


def _alarm(signum, frame):
    raise CaseTimeout


def same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b)
    return a == b


def finite(obs) -> bool:
    if isinstance(obs, dict):
        return all(finite(v) for v in obs.values())
    if isinstance(obs, np.ndarray) and obs.dtype.kind == "f":
        return bool(np.isfinite(obs).all())
    return True


def judge(work: Path, rel: Path, observe, reference, strict: bool) -> str | None:
    """None when the outcome is allowed, else what went wrong (one line)."""
    edited = work / rel
    try:
        obs = observe(work)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        message = str(e)
        if "\n" in message.strip():
            return f"a {type(e).__name__} of several lines: {message[:200]!r}"
        if edited.name not in message or str(edited.parent) not in message:
            return f"the message does not name {rel}: {type(e).__name__}: {message[:200]}"
        return None
    if same(obs, reference):
        return None
    if strict:
        return "loaded and gave different results (a damaged folder taken as a model)"
    return None if finite(obs) else "loaded and gave non-finite results"


def run_worker(names: list[str], root: Path, report: Path) -> None:
    """Build the kinds' folders, then run every case under a time and memory limit."""
    import torch

    torch.set_num_threads(1)
    found = kinds(root / "folders", names)
    size = _vm_bytes()
    resource.setrlimit(resource.RLIMIT_AS, (size + MEMORY_HEADROOM, resource.RLIM_INFINITY))
    signal.signal(signal.SIGALRM, _alarm)
    failures, counts, started = [], {}, time.perf_counter()
    for kind, (folder, observe) in found.items():
        reference = observe(folder)
        work = root / "work" / kind
        counts[kind] = 0
        for rel, what, apply, strict in cases(folder):
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(folder, work)
            apply(work / rel)
            signal.alarm(CASE_SECONDS)
            try:
                problem = judge(work, rel, observe, reference, strict)
            except CaseTimeout:
                problem = f"still running after {CASE_SECONDS} s"
            except MemoryError:
                problem = "ran out of the address-space limit (allocated gigabytes)"
            except Exception as e:  # noqa: BLE001 - a traceback is exactly what must not happen
                last = traceback.extract_tb(e.__traceback__)[-1]
                where = f"{Path(last.filename).name}:{last.lineno}"
                problem = f"traceback {type(e).__name__} at {where}: {str(e)[:150]}"
            finally:
                signal.alarm(0)
            counts[kind] += 1
            if problem:
                failures.append(f"{kind} {rel} {what}: {problem}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report.write_text(json.dumps({"failures": failures, "counts": counts, "peak_rss": peak,
                                  "seconds": time.perf_counter() - started}))  # fmt: skip


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 8 << 30


# ----- the test --------------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_every_edit_of_every_artifact_is_refused_in_one_line_or_harmless(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    procs = {}
    for worker, names in WORKERS.items():
        report = tmp_path / f"{worker}.json"
        args = [sys.executable, __file__, str(tmp_path / worker), str(report), *names]
        procs[worker] = (subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True), report)
    failures, counts = [], {}
    for worker, (proc, report) in procs.items():
        try:
            _, err = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"worker {worker} ({WORKERS[worker]}) did not finish in 600 s")
        assert proc.returncode == 0, f"worker {worker} crashed: {err[-2000:]}"
        result = json.loads(report.read_text())
        failures += result["failures"]
        counts.update(result["counts"])
        assert result["peak_rss"] < 3 << 30, result["peak_rss"]
    assert set(counts) == {k for names in WORKERS.values() for k in names}
    assert min(counts.values()) >= 30, counts  # every kind really was mutated
    assert not failures, f"{len(failures)} of {sum(counts.values())} cases:\n" + "\n".join(
        failures[:60]
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    run_worker(sys.argv[3:], Path(sys.argv[1]), Path(sys.argv[2]))
