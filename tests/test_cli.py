"""The CLI through its runner: every command end to end on small synthetic data, and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from thumbview.cli import app

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def ok(*args: str):
    result = invoke(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "synth"
    ok("synth", root, "--n", "120", "--seed", "1")
    return root


@pytest.fixture(scope="module")
def model_dir(synth_dir: Path) -> Path:
    out = synth_dir.parent / "model"
    ok("train", synth_dir, "--encoders", "visual,title", "--out", out, "--holdout", "0.25")
    return out


def test_synth_writes_a_loadable_dataset(synth_dir):
    table = pd.read_csv(synth_dir / "metadata.csv", dtype=str, keep_default_na=False)
    assert len(table) == 120
    assert (synth_dir / "planted.json").exists()
    result = ok("info", synth_dir)
    assert "120 rows, 120 kept" in result.output


def test_embed_then_reuse(synth_dir):
    first = ok("embed", synth_dir, "--encoders", "title")
    assert "computed" in first.output
    again = ok("embed", synth_dir, "--encoders", "title")
    assert "120 cached, 0 computed" in again.output


def test_train_writes_model_plots_and_holdout_eval(model_dir):
    for name in ("model.safetensors", "config.json", "encoders.json", "training.json", "eval.json"):
        assert (model_dir / name).exists(), name
    assert (model_dir / "pred_vs_actual.png").stat().st_size > 1000
    holdout = json.loads((model_dir / "eval.json").read_text())
    assert set(holdout["baselines"]) >= {"global-median", "visual-only", "title-only"}


def test_evaluate_json_excludes_training_rows(model_dir, synth_dir):
    result = ok("evaluate", model_dir, synth_dir, "--json")
    payload = json.loads(result.stdout)
    assert {"spearman", "mae_log10", "r2", "n", "baselines"} <= set(payload)
    n_train = len(json.loads((model_dir / "training.json").read_text())["video_ids"])
    assert payload["n"] == 120 - n_train
    assert payload["n_excluded_seen"] == n_train
    assert payload["spearman"] > 0.2  # planted effects are learnable even from 90 rows
    assert payload["n_shared_channels"] == 0  # the hold-out split was channel-disjoint
    assert payload["interval_level"] == 0.8 and 0 <= payload["interval_coverage"] <= 1


@pytest.fixture(scope="module")
def unseen_dirs(synth_dir: Path) -> tuple[Path, Path]:
    """(planted, noise): new synthetic channels the model never saw, and the same images and
    titles with views drawn independently of them (log-normal around 10K: pure noise)."""
    planted, noise = synth_dir.parent / "unseen", synth_dir.parent / "noise"
    ok("synth", planted, "--n", "200", "--seed", "2")
    shutil.copytree(planted, noise)
    table = pd.read_csv(noise / "metadata.csv", dtype=str, keep_default_na=False)
    views = 10 ** (4 + np.random.default_rng(0).normal(0, 0.4, len(table)))
    table["views"] = np.round(views).astype(int).astype(str)
    table.to_csv(noise / "metadata.csv", index=False)
    return planted, noise


def test_evaluate_ends_with_the_verdict_on_the_data(model_dir, unseen_dirs):
    planted, noise = unseen_dirs
    said = " ".join(ok("evaluate", model_dir, planted).output.split())
    assert "verdict on this data: this model beats the median baseline on 200" in said
    assert "90% interval +" in said and "no skill shown" not in said
    quiet = " ".join(ok("evaluate", model_dir, noise).output.split())
    assert "verdict on this data: this model " in quiet and "beats the median" not in quiet
    assert "guessing the training median for every video on 200 held-out videos" in quiet
    assert "no skill shown on this data" in quiet


def test_evaluate_json_carries_the_verdict(model_dir, unseen_dirs):
    planted, noise = unseen_dirs
    good = json.loads(ok("evaluate", model_dir, planted, "--json").stdout)["verdict"]
    bad = json.loads(ok("evaluate", model_dir, noise, "--json").stdout)["verdict"]
    for v in (good, bad):  # the MAEs of the scored rows, and a channel-clustered interval
        assert v["n_rows"] == 200 and v["n_channels"] > 10 and v["level"] == 0.9
        assert v["gain"] == pytest.approx(v["mae_median"] - v["mae_model"])
        assert v["gain_low"] < v["gain"] < v["gain_high"]
    assert good["beats_median"] is True and good["gain_low"] > 0 and good["no_skill_note"] == ""
    assert bad["beats_median"] is False and bad["gain_low"] <= 0
    assert bad["no_skill_note"].startswith("no demonstrated skill: this model ")
    assert bad["summary"].split(";")[0] in bad["no_skill_note"]


def test_cv_json_has_folds(synth_dir):
    result = ok("cv", synth_dir, "--encoders", "visual", "--folds", "3", "--json")
    payload = json.loads(result.stdout)
    assert len(payload["folds"]) == 3 and payload["n"] == 120
    assert "global-median" in payload["baselines"]


def test_predict_json_with_interval(model_dir, synth_dir):
    images = sorted((synth_dir / "images").glob("*.jpg"))[:2]
    result = ok("predict", model_dir, *images, "--title", "I tried the secret 🔥", "--json")
    rows = json.loads(result.stdout)
    assert isinstance(rows, list) and len(rows) == 2  # as its --help says: an array
    assert rows[0]["title"] == "I tried the secret 🔥"
    said = " ".join(ok("predict", "--help").output.replace("│", " ").split())
    assert "Print a JSON array (one object per image x title)" in said
    for row in rows:
        assert row["low"] <= row["views"] <= row["high"]


def test_predict_table_shows_views(model_dir, synth_dir):
    image = next((synth_dir / "images").glob("*.jpg"))
    result = ok("predict", model_dir, image)
    assert "predicted views" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (("info", "/no/such/folder"), "not found"),
        (("predict", "/no/such/model", "x.jpg"), "model"),
        (("train", "/no/such/folder", "--out", "/tmp/x"), "not found"),
    ],
)
def test_user_errors_exit_2_without_traceback(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert message in result.output.lower()


def test_explain_a_model_prediction(model_dir, synth_dir):
    image = next((synth_dir / "images").glob("*.jpg"))
    result = ok("explain", model_dir, image, "--title", "I tried the secret", "--json")
    ex = json.loads(result.stdout)
    total = ex["baseline_log10"] + sum(b["contribution_log10"] for b in ex["blocks"])
    assert abs(total - ex["log10"]) < 1e-6  # ridge attributions add up exactly
    assert ex["features"] and "typical thumbnail" in ok("explain", model_dir, image).output


def test_stacked_head_trains_and_explains_through_the_cli(synth_dir, tmp_path):
    out = tmp_path / "stacked"
    ok("train", synth_dir, "--encoders", "visual,title", "--head", "stacked", "--out", out)
    image = next((synth_dir / "images").glob("*.jpg"))
    ex = json.loads(ok("explain", out, image, "--title", "I tried the secret", "--json").stdout)
    assert ex["method"] == "linear + tree-path / 2" and ex["features"]


def test_explain_rejects_a_folder_that_is_neither(tmp_path, synth_dir):
    image = next((synth_dir / "images").glob("*.jpg"))
    result = invoke("explain", tmp_path, image)
    assert result.exit_code == 2 and "neither" in result.output


def test_predict_rejects_a_non_image(model_dir, tmp_path):
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    result = invoke("predict", model_dir, fake)
    assert result.exit_code == 2 and "not an image" in result.output


def test_missing_views_column_is_named(tmp_path):
    (tmp_path / "metadata.csv").write_text("file_name,title\na.jpg,hello\n")
    result = invoke("info", tmp_path)
    assert result.exit_code == 2 and "views" in result.output


def test_unknown_encoder_is_a_clear_error(synth_dir, tmp_path):
    result = invoke("train", synth_dir, "--encoders", "nope", "--out", tmp_path / "m")
    assert result.exit_code == 2 and "nope" in result.output


def test_demo_recovers_planted_effects(tmp_path, monkeypatch):
    """What the demo claims: held-out ranking tracks the truth, planted factors come back."""
    from thumbview.demo import run_demo

    report = run_demo(tmp_path / "demo", n=400)
    assert report.spearman_truth > DEMO_MIN_SPEARMAN
    for e in report.effects:
        share = np.log10(e.estimated) / np.log10(e.planted)  # share of the log effect recovered
        assert DEMO_EFFECT_SHARE[0] < share < DEMO_EFFECT_SHARE[1], e
    views = {p.image: p.views for p in report.examples}
    assert views["warm + text + face"] > views["plain"] > views["dark + blurry"]
    monkeypatch.setattr("thumbview.demo.run_demo", lambda *args, **kwargs: report)
    shown = ok("demo", "--out", tmp_path / "demo", "--n", "400").output
    assert f"{report.spearman_truth:.3f}" in shown and "planted effects" in shown
    assert all(e.name in shown for e in report.effects)


DEMO_MIN_SPEARMAN = 0.5  # held-out predictions vs the planted true means (n=400)
DEMO_EFFECT_SHARE = (0.3, 1.5)  # recovered log-factor / planted log-factor, every effect


def test_sae_train_analyze_explain(synth_dir, tiny_clip_dir, tmp_path):
    sae_dir = tmp_path / "sae"
    ok(
        "sae",
        "train",
        synth_dir,
        "--out",
        sae_dir,
        "--model",
        tiny_clip_dir,
        "--expansion",
        "4",
        "--k",
        "4",
        "--batch-size",
        "32",
        "--epochs",
        "2",
        "--cache-dir",
        tmp_path / "cache",
    )
    assert (sae_dir / "sae" / "cfg.json").is_file()  # the layout `sae train --out` writes
    assert not (sae_dir / "cfg.json").exists()
    sae = sae_dir / "sae"
    result = ok(
        "sae",
        "analyze",
        synth_dir,
        "--sae",
        sae_dir,  # the folder given to `sae train --out` is accepted as the SAE
        "--top-k",
        "8",
        "--min-active",
        "7",
        "--n-extreme",
        "3",
        "--n-null",
        "2000",
        "--n-boot",
        "50",
        "--cache-dir",
        tmp_path / "cache",
        "--out",
        tmp_path / "study",
    )
    assert (tmp_path / "study" / "report.html").exists()
    assert "KS statistic" in result.output
    image = next((synth_dir / "images").glob("*.jpg"))
    explained = ok("explain", sae, image, "--study", tmp_path / "study", "--json")
    features = json.loads(explained.stdout)
    activations = [f["activation"] for f in features]
    assert activations == sorted(activations, reverse=True) and len(features) <= 10


def test_sae_analyze_with_latents_file(synth_dir, tmp_path):
    rng = np.random.default_rng(0)
    z = rng.exponential(size=(120, 12)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    result = ok(
        "sae",
        "analyze",
        synth_dir,
        "--latents",
        tmp_path / "z.npy",
        "--top-k",
        "10",
        "--min-active",
        "9",
        "--n-extreme",
        "3",
        "--n-null",
        "2000",
        "--n-boot",
        "20",
        "--out",
        tmp_path / "study",
        "--json",
    )
    summary = json.loads(result.stdout)
    assert summary  # a JSON object with the study's numbers
    bad = invoke(
        "sae", "analyze", synth_dir, "--latents", tmp_path / "z.npy", "--out", tmp_path / "s2"
    )
    assert bad.exit_code == 0 or "Traceback" not in bad.output


def test_sae_analyze_wrong_row_count(synth_dir, tmp_path):
    np.save(tmp_path / "z.npy", np.ones((7, 3), np.float32))
    result = invoke(
        "sae", "analyze", synth_dir, "--latents", tmp_path / "z.npy", "--out", tmp_path / "s"
    )
    assert result.exit_code == 2 and "rows" in result.output


def _tiny_video(path: Path, images: list[Path]) -> Path:
    """Two seconds per thumbnail, 5 fps, mpeg4: enough shots for `frames` to choose from."""
    import av
    from PIL import Image

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        for image in images:
            rgb = np.asarray(Image.open(image).convert("RGB").resize((320, 180)))
            for _ in range(10):
                for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_frames_command_writes_stills(model_dir, synth_dir, tmp_path):
    images = sorted((synth_dir / "images").glob("*.jpg"))[:4]
    video = _tiny_video(tmp_path / "clip.mp4", images)
    result = ok(
        "frames", video, "--model", model_dir, "--top", "2", "--out", tmp_path / "f", "--json"
    )
    payload = json.loads(result.stdout)
    assert 1 <= len(payload["choices"]) <= 2
    assert (tmp_path / "f" / "contact_sheet.png").exists()


def test_frames_command_rejects_an_image(model_dir, synth_dir):
    image = next((synth_dir / "images").glob("*.jpg"))
    result = invoke("frames", image, "--model", model_dir)
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_compare_command_ranks_and_draws(model_dir, synth_dir, tmp_path):
    a, b = sorted((synth_dir / "images").glob("*.jpg"))[:2]
    result = ok(
        "compare",
        a,
        b,
        "--model",
        model_dir,
        "-t",
        "one",
        "-t",
        "two",
        "--png",
        tmp_path / "s.png",
        "--json",
    )
    payload = json.loads(result.stdout)
    assert len(payload["candidates"]) == 4  # 2 images x 2 titles
    assert abs(sum(c["p_best"] for c in payload["candidates"]) - 1) < 1e-6
    assert (tmp_path / "s.png").stat().st_size > 1000
    table = ok("compare", a, b, "--model", model_dir)
    said = " ".join(table.output.split())
    assert "chance best" in said and "verdict:" in said
    # in words: what it means, or why it is not shown (this small model ties every candidate)
    meaning = "chance best: how often each candidate comes out on top" in said
    assert meaning is payload["chance_best_shown"]
    assert payload["chance_best_note"].split(":")[0] == "chance best"


def test_compare_table_shows_no_chance_best_for_a_model_without_skill(model_dir, synth_dir,
                                                                       tmp_path):  # fmt: skip
    """A model whose card says its same-channel calls were not better than a coin: every
    candidate "=1", chance best "-" in the table with the line saying why, flagged in --json."""
    from thumbview.compare import NO_CHANCE_BEST

    model = Path(shutil.copytree(model_dir, tmp_path / "m"))
    card = json.loads((model / "card.json").read_text())
    card["skill"]["within_channel"] = False
    (model / "card.json").write_text(json.dumps(card))
    a, b, c = sorted((synth_dir / "images").glob("*.jpg"))[:3]
    payload = json.loads(ok("compare", a, b, c, "--model", model, "--json").stdout)
    assert payload["rank_labels"] == ["=1", "=1", "=1"] and payload["no_skill_note"]
    assert payload["chance_best_shown"] is False and payload["chance_best_note"] == NO_CHANCE_BEST
    out = ok("compare", a, b, c, "--model", model, "--png", tmp_path / "t.png").output
    rows = [line for line in out.splitlines() if "=1" in line]
    assert len(rows) == 3 and all(line.rstrip(" │|").endswith("-") for line in rows)
    assert not any("%" in line for line in rows)
    assert NO_CHANCE_BEST in " ".join(out.split())
    said = " ".join(out.split())  # the verdict carries the no-skill line: said once, not twice
    assert said.count(" ".join(payload["no_skill_note"].split())) == 1
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_ctrl_c_says_how_to_resume(synth_dir, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # patched where the command looks it up at call time (no module keeps the fake)
    monkeypatch.setattr("thumbview.embed.cache.embed", interrupted)
    result = invoke("embed", synth_dir, "--encoders", "title")
    assert result.exit_code == 130
    assert "run the same command to resume" in result.output and "Traceback" not in result.output


# ----- fast start, help, advice ---------------------------------------------------------------
def test_importing_the_cli_loads_no_torch_or_training_stack():
    import subprocess
    import sys

    src = Path(__file__).resolve().parents[1] / "src"
    watch = ("torch", "scipy.stats", "matplotlib", "sklearn", "thumbview.predict.workflow")
    code = f"import sys, thumbview.cli; print([m for m in {watch!r} if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def _commands(group, prefix=()):
    import click

    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def test_help_reads_like_a_command_line_and_every_option_says_what_it_does():
    import typer

    group = typer.main.get_command(app)
    for path, cmd in _commands(group):
        text = invoke(*path, "--help").output
        for python_type in ("<bool>", "<list[", "<path>", "<int>", "{"):
            assert python_type not in text, (path, python_type)
        for param in cmd.params:
            if param.param_type_name == "option" and param.name != "help":
                assert param.help, f"thumbview {' '.join(path)} {param.opts[0]} has no help"


def test_the_clip_download_command_exists_here():
    import shutil
    import subprocess
    import sys

    from thumbview.embed.clip import DOWNLOAD_COMMAND, _how_to_get

    program, *sub = DOWNLOAD_COMMAND.split()
    exe = shutil.which(program) or shutil.which(program, path=str(Path(sys.executable).parent))
    assert exe, f"`{program}` (from the CLIP advice) is not installed"
    assert subprocess.run([exe, *sub, "--help"], capture_output=True, timeout=120).returncode == 0
    assert DOWNLOAD_COMMAND in _how_to_get("openai/clip-vit-base-patch32")


# ----- arguments checked before long work -----------------------------------------------------
def test_unknown_encoder_is_reported_before_the_dataset_is_read(tmp_path):
    result = invoke(
        "train", tmp_path / "no-such-data", "--encoders", "visual,nope", "--out", tmp_path
    )
    assert result.exit_code == 2 and "nope" in result.output and "not found" not in result.output


def test_serve_fails_on_a_missing_model_before_printing_the_url(tmp_path):
    result = invoke("serve", "--model", tmp_path / "nomodel")
    assert result.exit_code == 2 and "http://" not in result.output
    assert "nomodel" in result.output


# ----- what people read -----------------------------------------------------------------------
def test_missing_title_is_warned_with_what_was_assumed(model_dir, synth_dir):
    image = next((synth_dir / "images").glob("*.jpg"))
    said = " ".join(ok("predict", model_dir, image).output.split())  # the warning may wrap
    assert "uses the title" in said and "as if the title were empty" in said
    titled = " ".join(ok("predict", model_dir, image, "--title", "My video").output.split())
    assert "as if the title were empty" not in titled


def test_predict_table_shows_the_file_name_and_the_models_interval(model_dir, synth_dir):
    image = sorted((synth_dir / "images").glob("*.jpg"))[0]
    result = ok("predict", model_dir, image, "--title", "t")
    assert image.name in result.output and str(image.parent) not in result.output
    assert "80% interval" in result.output  # the model's coverage (0.8 by default)


@pytest.mark.parametrize(
    "name", ["[/].jpg", "[bold]x[/bold].jpg", "[link=https:evil.example]x.jpg", "no[/]such"]
)
def test_markup_in_file_names_is_shown_literally_on_one_line(model_dir, tmp_path, name):
    path = tmp_path / ("d" * 90) / name  # longer than 80 columns: must not wrap on a pipe
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".jpg"):
        path.write_text("not an image")
    result = invoke("predict", model_dir, path)
    assert result.exit_code == 2 and "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and name in error_lines[0], result.output


def test_the_demo_folder_is_ignored_by_git():
    import inspect

    from thumbview.cli.predict import demo_command

    default = inspect.signature(demo_command).parameters["out"].default
    ignore = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()
    assert f"{default}/" in ignore


def test_help_names_the_extras_to_install():
    """Rich reads `[bot]` as markup and drops it unless escaped; the help must keep it."""
    assert "thumbview[bot]" in ok("--help").output
    assert "thumbview[ray]" in ok("embed", "--help").output.replace("\n", " ")
