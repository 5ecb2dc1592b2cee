"""SAE training: a planted sparse dictionary is recovered, dead latents revive with AuxK,
checkpoints resume to the same weights, and saved SAEs round-trip exactly."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from thumbview.sae.architectures import build_sae
from thumbview.sae.config import sae_config
from thumbview.sae.folder import SaeFileError, load_sae, save_sae
from thumbview.sae.model import SaeError, SaeInputError, SparseAutoencoder
from thumbview.sae.train import SaeTrainer, TrainConfig, checkpoints, latest_checkpoint

FAST = {"batch_size": 256, "lr": 4e-3, "warmup_steps": 10}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matrices: a second thread only adds sync overhead, badly so on a shared box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@cache
def planted(
    n: int = 20_000, d: int = 32, atoms: int = 64, active: int = 3, span: int | None = None
) -> np.ndarray:
    """Each row is 3 of 64 unit atoms with weights in [0.5, 2]; atoms use the first `span` dims."""
    rng = np.random.default_rng(0)
    dictionary = np.zeros((atoms, d))
    dictionary[:, : span or d] = rng.standard_normal((atoms, span or d))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    which = np.argsort(rng.random((n, atoms)), axis=1)[:, :active]
    coef = np.zeros((n, atoms))
    np.put_along_axis(coef, which, rng.uniform(0.5, 2.0, (n, active)), axis=1)
    x = (coef @ dictionary).astype(np.float32)
    x.setflags(write=False)
    return x


def test_topk_recovers_planted_dictionary(tmp_path):
    x = planted()
    sae = build_sae(sae_config(d_in=32, expansion_factor=4, k=4), seed=0)
    trainer = SaeTrainer(sae, TrainConfig(epochs=2, **FAST))
    before = trainer.evaluate(x)
    trainer.fit(x, tmp_path)
    after = trainer.evaluate(x)
    assert after.explained_variance > 0.8 > before.explained_variance + 0.1
    assert after.l0 == 4 and after.n == 20_000
    assert after.explained_variance == pytest.approx(1 - after.fvu)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(128))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == trainer.steps_done == 2 * (19_000 // 256)  # 5% held out
    held = metrics["heldout_eval"]
    assert held["n"] == 1000 and held["explained_variance"] > 0.75
    assert trainer.heldout_metrics.explained_variance == held["explained_variance"]
    assert metrics["train_eval"]["n"] == 19_000
    assert (tmp_path / "feature_density.png").read_bytes()[:4] == b"\x89PNG"
    # the reported count of never-firing latents is the one the density plot shows
    assert trainer.reported_metrics == trainer.heldout_metrics
    assert held["never_fired"] == round(held["dead_fraction"] * 128) and held["d_sae"] == 128
    assert int((trainer.eval_frequency == 0).sum()) == after.never_fired  # plot == line
    assert [p.name for p in checkpoints(tmp_path / "checkpoint")] == ["000001"]  # the final save
    assert (latest_checkpoint(tmp_path / "checkpoint") / "state.safetensors").exists()
    reloaded = load_sae(tmp_path / "sae")
    torch.testing.assert_close(reloaded.W_dec, sae.W_dec, rtol=0, atol=0)


def test_relu_l1_with_ghost_grads_trains(tmp_path):
    x = planted()
    cfg = sae_config("relu-l1", d_in=32, expansion_factor=4, dead_after=1024)
    sae = build_sae(cfg, seed=0)
    with torch.no_grad():
        sae.b_enc[96:] = -3.0  # a quarter start dead, so the ghost-grad term is exercised
    trainer = SaeTrainer(sae, TrainConfig(**FAST))
    history = []
    order = np.random.default_rng(0).permutation(len(x))
    for i in range(60):
        batch = torch.from_numpy(x[order[i * 256 : (i + 1) * 256]])
        if i == 0:
            sae.init_b_dec_(batch)
        history.append(trainer.step(batch))
    assert np.mean([h["loss"] for h in history[-10:]]) < 0.5 * np.mean(
        [h["loss"] for h in history[:10]]
    )
    assert max(h["aux_loss"] for h in history) > 0  # ghost grads switched on once latents were dead
    assert trainer.evaluate(x).explained_variance > 0.7


@pytest.mark.parametrize("normalize", [True, False])
def test_relu_l1_coefficient_does_not_depend_on_activation_scale(tmp_path, normalize):
    """SAELens-style input normalisation: x and 100 x train the same SAE (in latent units)."""
    x = planted(n=4000)
    saes, l1_share = [], []
    for scale in (1.0, 100.0):
        cfg = sae_config(
            "relu-l1", d_in=32, expansion_factor=2, l1_coefficient=0.05,
            normalize_activations=normalize,
        )  # fmt: skip
        trainer = SaeTrainer(build_sae(cfg, seed=0), TrainConfig(**FAST))
        saes.append(trainer.fit(x * np.float32(scale), tmp_path / f"{normalize}-{scale}"))
        last = trainer.last_metrics  # share of the loss that is the L1 penalty
        l1_share.append(0.05 * last["l1_loss"] / last["loss"])
    xt = torch.from_numpy(x[:500].copy())
    small, big = saes[0].encode(xt), saes[1].encode(xt * 100)
    if normalize:
        assert l1_share[0] == pytest.approx(l1_share[1], rel=1e-2)
        torch.testing.assert_close(big, small, rtol=1e-3, atol=1e-4)
        recon = saes[1].decode(big)  # the saved SAE takes and returns raw activations
        assert float((recon.detach() - xt * 100).pow(2).sum() / (xt * 100).pow(2).sum()) < 0.5
        assert (
            json.loads((tmp_path / "True-100.0" / "sae" / "cfg.json").read_text())[
                "normalize_activations"
            ]
            == "none"
        )  # folded into the weights
    else:
        assert l1_share[0] > 10 * l1_share[1]  # the same coefficient weighs 100x less


def _kill_latents(sae: SparseAutoencoder, span: int, frac: float = 0.75) -> None:
    """Point most latents almost entirely outside the data's span: they lose every TopK race."""
    n = int(frac * sae.cfg.d_sae)
    w = torch.randn(n, sae.cfg.d_in, generator=torch.Generator().manual_seed(1))
    w[:, :span] *= 0.05
    w /= w.norm(dim=1, keepdim=True)
    with torch.no_grad():
        sae.W_dec[-n:] = w
        sae.W_enc[:, -n:] = w.T


def test_aux_loss_revives_dead_latents(tmp_path):
    x = planted(span=16)
    dead = {}
    for aux in (0.0, 1 / 32):
        cfg = sae_config(d_in=32, expansion_factor=4, k=4, dead_after=1024, aux_coefficient=aux)
        sae = build_sae(cfg, seed=0)
        _kill_latents(sae, span=16)
        trainer = SaeTrainer(sae, TrainConfig(dead_window=2048, **FAST))
        trainer.fit(x, tmp_path / str(aux))
        dead[aux] = trainer.evaluate(x).dead_fraction
    assert dead[0.0] >= 0.7  # without AuxK the pushed-out latents never come back
    assert dead[1 / 32] < dead[0.0] - 0.1


class _Crash(Exception):
    pass


class _CrashingTrainer(SaeTrainer):
    """Dies after `crash_at` steps, like a killed process (unsaved steps are lost)."""

    crash_at = 10

    def step(self, batch):
        if self.steps_done == self.crash_at:
            raise _Crash
        return super().step(batch)


def _resume_setup(trainer_cls=SaeTrainer, **train_kw):
    cfg = sae_config(d_in=32, expansion_factor=4, k=4, dead_after=300)
    train = TrainConfig(
        batch_size=128, lr=4e-3, warmup_steps=5, epochs=2, checkpoint_every=7, dead_window=500
    )
    return trainer_cls(build_sae(cfg, seed=0), TrainConfig(**{**train.__dict__, **train_kw}))


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    x = planted(n=2000)
    reference = _resume_setup()
    reference.fit(x, tmp_path / "straight")
    with pytest.raises(_Crash):
        _resume_setup(_CrashingTrainer).fit(x, tmp_path / "resumed")
    saved = json.loads((latest_checkpoint(tmp_path / "resumed" / "checkpoint") / "trainer.json").read_text())  # fmt: skip
    assert saved["steps_done"] == 7  # steps 8-10 were lost with the crash and are redone
    resumed = _resume_setup()
    resumed.fit(x, tmp_path / "resumed")
    assert resumed.steps_done == reference.steps_done == 2 * (1900 // 128)  # 5% held out
    for name, p in reference.sae.named_parameters():
        torch.testing.assert_close(dict(resumed.sae.named_parameters())[name], p, msg=name)
    torch.testing.assert_close(resumed.since_fired, reference.since_fired)
    assert resumed.samples_seen == reference.samples_seen


@pytest.mark.parametrize("where", ["staging", "before the rename", "after the rename"])
def test_a_save_killed_between_its_steps_resumes_from_the_last_complete_checkpoint(
    where, tmp_path, monkeypatch
):
    """The second checkpoint's save (step 14) is killed: while its files are written, before
    the rename that publishes it, or after it, before the older one is removed. Before, the
    swap renamed `checkpoint/` away and then the new one in, with nothing flushed to disk.
    Now `--resume` finds the last complete checkpoint (step 7, or 14 once published) and
    ends with the weights of a run never interrupted."""
    import thumbview.sae.train as sae_train

    x = planted(n=2000)
    reference = _resume_setup()
    reference.fit(x, tmp_path / "straight")
    real_save, real_publish, saves = sae_train.save_file, sae_train.publish_dir, []

    def save_file(tensors, path):
        saves.append(path)
        if len(saves) == 2 and where == "staging":
            Path(path).write_bytes(b"half a file")
            raise _Crash
        return real_save(tensors, path)

    def publish_dir(staging, target):
        if len(saves) == 2 and where == "before the rename":
            raise _Crash
        published = real_publish(staging, target)
        if len(saves) == 2 and where == "after the rename":
            raise _Crash
        return published

    out = tmp_path / "killed"
    with monkeypatch.context() as patch:
        patch.setattr(sae_train, "save_file", save_file)
        patch.setattr(sae_train, "publish_dir", publish_dir)
        with pytest.raises(_Crash):
            _resume_setup().fit(x, out)
    expected = 14 if where == "after the rename" else 7
    assert _resume_setup().load_checkpoint(out / "checkpoint").steps_done == expected
    resumed = _resume_setup()
    resumed.fit(x, out)
    assert resumed.steps_done == reference.steps_done
    for name, p in reference.sae.named_parameters():
        torch.testing.assert_close(dict(resumed.sae.named_parameters())[name], p, msg=name)
    assert len(checkpoints(out / "checkpoint")) == 1  # older ones and staging cleared
    assert not list((out / "checkpoint").glob(".*"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fds through /proc")
def test_a_checkpoint_is_on_disk_before_the_rename_that_publishes_it(tmp_path, monkeypatch):
    """Before, nothing was flushed: after a power cut the swapped-in `checkpoint/` could hold
    empty files with the previous one already deleted. Now both files are flushed before
    the one rename that makes the checkpoint visible, and its folder's entry right after."""
    import os

    events, real_fsync, real_rename = [], os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(src, dst, *args, **kwargs):
        events.append(("rename", str(src), str(dst)))
        return real_rename(src, dst, *args, **kwargs)

    trainer = _resume_setup()
    trainer.step(torch.tensor(planted(n=2000)[:128]))
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    published = trainer.save_checkpoint(tmp_path / "checkpoint")
    monkeypatch.undo()
    (at,) = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(published)]
    staging = Path(events[at][1])
    flushed_before = {e[1] for e in events[:at] if e[0] == "fsync"}
    assert {str(staging / "state.safetensors"), str(staging / "trainer.json")} <= flushed_before
    assert ("fsync", str(tmp_path / "checkpoint")) in events[at:]
    assert _resume_setup().load_checkpoint(tmp_path / "checkpoint").steps_done == 1


@pytest.mark.parametrize("layout", ["checkpoint", "checkpoint.old"])
def test_a_checkpoint_written_before_numbering_still_resumes(layout, tmp_path):
    """Folders from before numbered checkpoints: the files in `checkpoint/` itself, or only
    the `checkpoint.old` that a kill between the old swap's two renames left. Both resume
    (to the weights of an uninterrupted run), and are cleared once a numbered one exists."""
    x = planted(n=2000)
    reference = _resume_setup()
    reference.fit(x, tmp_path / "straight")
    out = tmp_path / "old"
    with pytest.raises(_Crash):
        _resume_setup(_CrashingTrainer).fit(x, out)  # checkpointed at step 7
    (numbered,) = checkpoints(out / "checkpoint")
    numbered.rename(out / "checkpoint.old")
    if layout == "checkpoint":  # the two files directly in the folder
        (out / "checkpoint").rmdir()
        (out / "checkpoint.old").rename(out / "checkpoint")
    assert _resume_setup().load_checkpoint(out / "checkpoint").steps_done == 7
    resumed = _resume_setup()
    resumed.fit(x, out)
    for name, p in reference.sae.named_parameters():
        torch.testing.assert_close(dict(resumed.sae.named_parameters())[name], p, msg=name)
    assert not (out / "checkpoint.old").exists()
    assert not (out / "checkpoint" / "trainer.json").exists()
    assert [p.name for p in checkpoints(out / "checkpoint")] == ["000004"]  # 14, 21, 28, end


def test_checkpoint_round_trip_restores_optimizer_state(tmp_path):
    x = torch.tensor(planted(n=2000))
    a = _resume_setup()
    for i in range(3):
        a.step(x[i * 128 : (i + 1) * 128])
    a.save_checkpoint(tmp_path / "ckpt")
    b = _resume_setup().load_checkpoint(tmp_path / "ckpt")
    assert b.steps_done == 3
    for p, q in zip(a.sae.parameters(), b.sae.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(
                a.optimizer.state[p][key], b.optimizer.state[q][key], rtol=0, atol=0
            )


def test_resume_refuses_changed_settings(tmp_path):
    x = planted(n=2000)
    _resume_setup().fit(x, tmp_path)
    with pytest.raises(SaeFileError, match="batch_size: 128 -> 64"):
        _resume_setup(batch_size=64).fit(x, tmp_path)
    other = SaeTrainer(build_sae(sae_config(d_in=32, expansion_factor=2, k=4)), TrainConfig())
    with pytest.raises(SaeFileError, match="SAE config"):
        other.fit(x, tmp_path)


def test_fit_accepts_an_iterator_of_batches(tmp_path):
    x = planted(n=2000)
    trainer = _resume_setup()
    trainer.fit((x[i : i + 128] for i in range(0, 2000, 128)), tmp_path)
    assert trainer.steps_done == 16
    assert "train_eval" not in json.loads((tmp_path / "metrics.json").read_text())


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (np.zeros((10, 31), np.float32), SaeInputError, r"shape \(n, 32\), got \(10, 31\)"),
        (np.full((10, 32), np.nan, np.float32), SaeInputError, "NaN"),
        (np.zeros((1, 32), np.float32), SaeInputError, "at least 2"),
        (np.array([["a"] * 32] * 4), SaeInputError, "numeric"),
    ],
)
def test_fit_rejects_bad_activations(tmp_path, bad, error, message):
    with pytest.raises(error, match=message):
        _resume_setup().fit(bad, tmp_path)


def test_fit_rejects_wrong_width_batches_from_an_iterator(tmp_path):
    with pytest.raises(SaeInputError, match=r"\(batch, 32\)"):
        _resume_setup().fit(iter([np.zeros((8, 30), np.float32)]), tmp_path)


@pytest.mark.parametrize("arch", ["topk", "relu-l1"])
def test_save_load_round_trip_is_exact_and_sae_lens_shaped(tmp_path, arch):
    sae = build_sae(
        sae_config(arch, d_in=16, expansion_factor=4, **({"k": 3} if arch == "topk" else {})),
        seed=3,
    )
    with torch.no_grad():
        sae.b_enc.uniform_(-1, 1)
        sae.b_dec.uniform_(-1, 1)
    save_sae(
        sae,
        tmp_path,
        {
            "model_name": "openai/clip-vit-large-patch14",
            "hook_name": "vision_model.encoder.layers.10",
        },
    )
    loaded = load_sae(tmp_path)
    assert loaded.cfg == sae.cfg
    for key in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(loaded, key), getattr(sae, key))
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["d_in"] == 16 and cfg["d_sae"] == 64 and cfg["dtype"] == "float32"
    assert cfg["architecture"] == ("topk" if arch == "topk" else "standard")
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["hook_name"] == "vision_model.encoder.layers.10"
    assert cfg["activation_fn_kwargs"] == ({"k": 3} if arch == "topk" else {})
    assert load_file(tmp_path / "sae_weights.safetensors")["W_enc"].shape == (16, 64)


def test_a_save_that_dies_mid_write_leaves_the_earlier_sae_whole(tmp_path, monkeypatch):
    """Before, `save_sae` wrote over `sae_weights.safetensors` in place (and `metrics.json`,
    `cfg.json`, shard manifests, cache sidecars likewise): a kill mid-write left half a
    file where a whole one was. Now each goes to a temp file renamed over the old one."""
    import thumbview.sae.folder as folder

    first = build_sae(sae_config(d_in=32, expansion_factor=4, k=4), seed=0)
    save_sae(first, tmp_path / "sae")
    before = {p.name: p.read_bytes() for p in (tmp_path / "sae").iterdir()}

    def dies_mid_write(tensors, path):
        Path(path).write_bytes(b"half a safetensors file")
        raise _Crash

    monkeypatch.setattr(folder, "save_file", dies_mid_write)
    with pytest.raises(_Crash):
        save_sae(build_sae(sae_config(d_in=32, expansion_factor=4, k=4), seed=1), tmp_path / "sae")
    assert {p.name: p.read_bytes() for p in (tmp_path / "sae").iterdir()} == before
    torch.testing.assert_close(load_sae(tmp_path / "sae").W_dec, first.W_dec, rtol=0, atol=0)


def test_load_reads_a_plain_sae_lens_config(tmp_path):
    sae = build_sae(sae_config(d_in=8, expansion_factor=2, k=2), seed=0)
    save_sae(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    del cfg["thumbview"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert load_sae(tmp_path).cfg == sae_config(d_in=8, expansion_factor=2, k=2)


def test_extra_cfg_cannot_override_core_fields(tmp_path):
    with pytest.raises(SaeError, match="d_in"):
        save_sae(build_sae(sae_config(d_in=8, expansion_factor=2, k=2)), tmp_path, {"d_in": 9})


def test_load_errors_are_clear(tmp_path):
    sae = build_sae(sae_config(d_in=8, expansion_factor=2, k=2), seed=0)
    with pytest.raises(SaeFileError, match="SAE folder not found"):
        load_sae(tmp_path / "nope")
    save_sae(sae, tmp_path)
    weights = tmp_path / "sae_weights.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:50])
    with pytest.raises(SaeFileError, match="corrupt safetensors"):
        load_sae(tmp_path)
    tensors = {k: getattr(sae, k).detach().contiguous() for k in ("W_enc", "b_enc", "W_dec")}
    save_file({**tensors, "b_dec": torch.zeros(9)}, weights)
    with pytest.raises(SaeFileError, match=r"'b_dec' has shape \(9,\), the config implies \(8,\)"):
        load_sae(tmp_path)
    save_file(tensors, weights)
    with pytest.raises(SaeFileError, match="tensor 'b_dec' is missing"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(SaeFileError, match="cfg.json: not valid JSON"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").unlink()
    with pytest.raises(SaeFileError, match="holds no SAE: neither .*cfg.json nor .*sae/cfg.json"):
        load_sae(tmp_path)


def test_sharded_activations_train_like_an_array_and_resume(tmp_path):
    """Activations on disk in shards, read batch by batch, give the in-memory run's weights."""
    from thumbview.sae.shards import ShardedActivations, write_shards

    x = planted(n=2000)
    shards = write_shards((x[s : s + 300] for s in range(0, 2000, 300)), tmp_path / "acts", 512)
    assert len(list((tmp_path / "acts").glob("activations-*.npy"))) == 4  # 512 x 3 + 464
    assert isinstance(shards, ShardedActivations) and shards.shape == (2000, 32)
    rows = np.array([1999, 3, 511, 512, 1024, 3])
    np.testing.assert_array_equal(shards[rows], x[rows])
    reference = _resume_setup()
    reference.fit(x, tmp_path / "array")
    with pytest.raises(_Crash):
        _resume_setup(_CrashingTrainer).fit(ShardedActivations(tmp_path / "acts"), tmp_path / "s")
    resumed = _resume_setup()
    resumed.fit(ShardedActivations(tmp_path / "acts"), tmp_path / "s")
    for name, p in reference.sae.named_parameters():
        torch.testing.assert_close(dict(resumed.sae.named_parameters())[name], p, msg=name)
    held = json.loads((tmp_path / "s" / "metrics.json").read_text())["heldout_eval"]
    assert held == json.loads((tmp_path / "array" / "metrics.json").read_text())["heldout_eval"]
    (tmp_path / "bad").mkdir()
    np.save(tmp_path / "bad" / "activations-00000.npy", np.zeros((3, 4), np.float32))
    np.save(tmp_path / "bad" / "activations-00001.npy", np.zeros((3, 5), np.float32))
    with pytest.raises(SaeError, match="different widths"):
        ShardedActivations(tmp_path / "bad")
