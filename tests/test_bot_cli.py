"""`thumbview bot ...` end to end on a tiny random base model saved to disk."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from typer.testing import CliRunner  # noqa: E402

from _bot_fixture import bot_model_dir, tiny_base  # noqa: E402, F401, F811
from thumbview.cli import app  # noqa: E402
from thumbview.layout import RUN_UNFINISHED  # noqa: E402

runner = CliRunner()
TINY = ("--steps", "2", "--size", "64x64", "--guidance", "1.5", "--batch", "1", "--per-prompt", "2")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text(
        "I tried it for 30 days\tbright red poster\n# a comment\n\nworst cake ever\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def trained_bot(tiny_base, bot_model_dir, prompts, tmp_path_factory):  # noqa: F811
    """1 ddpo epoch, then --resume to 2: the CLI's 2-epoch train, resumed halfway."""
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bots") / "bot"
    common = (
        "bot",
        "train",
        "--base",
        tiny_base,
        "--model",
        bot_model_dir,
        "--prompts",
        prompts,
        "--out",
        out,
        "--method",
        "ddpo",
        "--eval-model",
        bot_model_dir,
        *TINY,
    )
    first = invoke(*common, "--epochs", "1")
    assert first.exit_code == 0, first.output + repr(first.exception)
    again = invoke(*common, "--epochs", "1")
    assert again.exit_code == 2 and "--resume" in again.output
    second = invoke(*common, "--epochs", "2", "--resume")
    assert second.exit_code == 0, second.output + repr(second.exception)
    return out


def test_train_writes_every_artifact_and_resumes(trained_bot):
    meta = json.loads((trained_bot / "bot.json").read_text())
    assert (
        meta["method"] == "ddpo" and meta["epochs_done"] == 2 and len(meta["reward_history"]) == 2
    )
    assert len(meta["predictor_digest"]) == 64
    rows = [json.loads(line) for line in (trained_bot / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"reward_mean", "reward_std", "kl", "ood_mean", "eval_log10", "eval_model_log10"} <= set(
        rows[0]
    )
    for name in (
        "pytorch_lora_weights.safetensors",
        "reward.png",
        "samples/epoch_001.png",
        "samples/epoch_002.png",
    ):
        assert (trained_bot / name).is_file(), name
    assert not list(trained_bot.rglob("*.pt")) and not list(trained_bot.rglob("*.pkl"))


def test_plain_diffusers_load_lora_weights_reads_the_trained_bot_folder(trained_bot, tiny_base):  # noqa: F811
    """What the README promises: a plain diffusers pipeline and `pipe.load_lora_weights(BOT)`
    (no weight name; the resume state lies in checkpoint-NNN/) give the UNet `bot train`
    trained: its noise predictions equal those of the trained adapter copied in by
    `--resume`'s own reader, and differ from the base UNet's (the trained LoRA is not zero)."""
    import torch
    from diffusers import StableDiffusionPipeline

    from thumbview.bot.policy import Policy, load_base

    pipe = StableDiffusionPipeline.from_pretrained(
        str(tiny_base), safety_checker=None, requires_safety_checker=False
    )
    unet = pipe.unet.config
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, unet.in_channels, unet.sample_size, unet.sample_size, generator=gen)
    text = torch.randn(2, 16, unet.cross_attention_dim, generator=gen)  # (B, L, E)
    with torch.no_grad():
        base = pipe.unet(x, 10, encoder_hidden_states=text).sample  # (B, C, h, w)
        pipe.load_lora_weights(str(trained_bot))
        tuned = pipe.unet(x, 10, encoder_hidden_states=text).sample
    rank = json.loads((trained_bot / "bot.json").read_text())["config"]["lora_rank"]
    resumed = Policy(load_base(tiny_base), lora_rank=rank)
    resumed.load_lora(trained_bot)
    with torch.no_grad():
        want = resumed.pipe.unet(x, 10, encoder_hidden_states=text).sample
    torch.testing.assert_close(tuned, want, rtol=1e-5, atol=1e-6)
    assert (tuned - base).abs().max() > 1e-4


def test_generate_json_is_sorted_by_predicted_views(trained_bot, tmp_path):
    result = invoke(
        "bot",
        "generate",
        trained_bot,
        "--title",
        "worst cake ever",
        "-n",
        "4",
        "--top",
        "3",
        "--out",
        tmp_path,
        "--json",
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    payload = json.loads(result.stdout)
    log10 = [c["log10"] for c in payload["candidates"]]
    assert len(log10) == 3 and log10 == sorted(log10, reverse=True)
    assert abs(sum(c["p_best"] for c in payload["candidates"]) - 1) < 1e-9
    assert all(c["low"] <= c["views"] <= c["high"] for c in payload["candidates"])
    from thumbview.compare import FALLBACK_NOTE

    assert payload["note"] == FALLBACK_NOTE  # the fixture's predictor has no pairwise model
    assert len(list(tmp_path.glob("*.png"))) == 3
    # so its skill at choosing between candidates was never shown, and generate says so
    assert payload["no_skill_note"].startswith("no demonstrated skill at choosing")
    table = invoke("bot", "generate", trained_bot, "--title", "worst cake ever", "-n", "2")
    assert "no demonstrated skill at choosing" in " ".join(table.output.split())


def _skilled_copy(model_dir, tmp_path):
    """The fixture's predictor with a card saying its same-channel calls beat a coin."""
    import shutil

    from thumbview.data.dataset import load_dataset
    from thumbview.predict.card import write_card

    model = shutil.copytree(model_dir, tmp_path / "skilled")
    dataset = load_dataset(model_dir.parent / "synth")
    write_card(model, dataset, range(len(dataset.paths)), within=True)
    return model


def test_generate_hides_chance_best_like_compare_under_a_no_skill_predictor(trained_bot, bot_model_dir, tmp_path):  # noqa: F811  # fmt: skip
    """The fixture's predictor never showed skill at choosing: every candidate "=1", chance
    best "-" with compare's NO_CHANCE_BEST line, flagged in --json (numbers kept); the same
    generation judged by a predictor with shown skill and candidates far apart next to its
    noise keeps ranks and percentages."""
    from thumbview.compare import CHANCE_BEST, NO_CHANCE_BEST

    common = ("bot", "generate", trained_bot, "--title", "worst cake ever", "-n", "3")
    payload = json.loads(invoke(*common, "--json").stdout)
    assert payload["rank_labels"] == ["=1", "=1", "=1"] and payload["no_skill_note"]
    assert payload["chance_best_shown"] is False and payload["chance_best_note"] == NO_CHANCE_BEST
    assert abs(sum(c["p_best"] for c in payload["candidates"]) - 1) < 1e-9  # kept, not shown
    out = invoke(*common).output
    rows = [line for line in out.splitlines() if "=1" in line]
    assert len(rows) == 3 and not any("%" in line for line in rows)
    assert all(line.split("│")[5].strip() == "-" for line in rows)  # the chance best cell
    assert NO_CHANCE_BEST in " ".join(out.split())

    skilled = _sharp_copy(bot_model_dir, tmp_path)
    shown = json.loads(invoke(*common, "--model", skilled, "--json").stdout)
    assert shown["rank_labels"] == ["1", "2", "3"] and shown["no_skill_note"] == ""
    assert shown["chance_best_shown"] is True and shown["chance_best_note"] == CHANCE_BEST
    out = invoke(*common, "--model", skilled).output
    rows = [line for line in out.splitlines() if line.startswith(("│ 1 ", "│ 2 ", "│ 3 "))]
    assert [line.split("│")[5].strip().endswith("%") for line in rows] == [True] * 3
    assert CHANCE_BEST in " ".join(out.split()) and NO_CHANCE_BEST not in " ".join(out.split())


def _sharp_copy(model_dir, tmp_path):
    """A skilled copy whose out-of-fold errors are shrunk a million-fold: a visible gap
    between two predictions is then far beyond the model's noise (known truth: no tie)."""
    from thumbview.predict.model import ViewPredictor

    model = _skilled_copy(model_dir, tmp_path / "sharp")
    predictor = ViewPredictor.load(model)
    predictor.residual_quantiles_ = predictor.residual_quantiles_ * 1e-6
    predictor.save(model)
    return model


def test_generate_ranks_with_compares_verdict_under_a_skilled_predictor(trained_bot, bot_model_dir, tmp_path, monkeypatch):  # noqa: F811  # fmt: skip
    """With skill shown, the bot's ranks come from compare's one verdict on the same
    features: candidates within the model's noise are "=1" with compare's sentence (compare
    on the saved PNGs says the same), and ones far apart next to the noise keep 1, 2, 3."""
    from thumbview.compare import compare_files
    from thumbview.predict.model import ViewPredictor

    common = ("bot", "generate", trained_bot, "--title", "worst cake ever", "-n", "3")
    skilled = _skilled_copy(bot_model_dir, tmp_path)
    payload = json.loads(
        invoke(*common, "--model", skilled, "--out", tmp_path / "o", "--json").stdout
    )
    files = [c["file"] for c in payload["candidates"]]
    said, _ = compare_files(skilled, files, ["worst cake ever"])
    assert [c.image for c in said.candidates] == [Path(f).name for f in files]  # same order
    assert payload["rank_labels"] == said.rank_labels()
    assert (payload["reliable"], payload["tied"]) == (said.reliable, said.tied)
    assert payload["rank_labels"][:2] == ["=1", "=1"]  # the tiny model's images are close
    assert payload["verdict"].startswith(f"no reliable difference between the top {said.tied}")
    chance = re.compile(r"is (\d+)% \(50% would be a coin flip\)$")
    assert chance.search(payload["verdict"])[1] == chance.search(said.verdict)[1]
    from thumbview.inference import LoadedPredictor

    calls, features = [], LoadedPredictor.blocks
    monkeypatch.setattr(LoadedPredictor, "blocks", lambda *a, **k: calls.append(1) or features(*a, **k))  # fmt: skip
    out = " ".join(invoke(*common, "--model", skilled).output.split())
    assert "verdict: no reliable difference between the top" in out
    assert len(calls) == 1  # the verdict reuses the features the scores came from

    sharp_dir = _sharp_copy(bot_model_dir, tmp_path)
    sharp = json.loads(invoke(*common, "--model", sharp_dir, "--json").stdout)
    log10 = [c["log10"] for c in sharp["candidates"]]
    noise = np.ptp(ViewPredictor.load(sharp_dir).residual_quantiles_)  # its errors' full range
    gaps = [a - b for a, b in zip(log10, log10[1:], strict=False)]
    assert min(gaps) > 10 * noise  # well apart next to the noise
    assert sharp["rank_labels"] == ["1", "2", "3"] and sharp["reliable"] is True
    assert sharp["verdict"].startswith(
        f"the image of seed {sharp['candidates'][0]['seed']} is likely ahead"
    )
    assert sharp["chance_best_shown"] is True


def test_eval_compares_base_and_bot(trained_bot, bot_model_dir, prompts, tmp_path):  # noqa: F811
    result = invoke(
        "bot",
        "eval",
        trained_bot,
        "--prompts",
        prompts,
        "--model",
        bot_model_dir,
        "--seeds",
        "1",
        "--out",
        tmp_path,
        "--json",
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    payload = json.loads(result.stdout)
    assert payload["n"] == 2 and 0 <= payload["win_rate"] <= 1
    assert (tmp_path / "base_vs_bot.png").is_file()


def test_bad_base_folder_exits_2_with_one_message(tmp_path, bot_model_dir, prompts):  # noqa: F811
    (tmp_path / "notsd").mkdir()
    result = invoke(
        "bot",
        "train",
        "--base",
        tmp_path / "notsd",
        "--model",
        bot_model_dir,
        "--prompts",
        prompts,
        "--out",
        tmp_path / "o",
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output and result.output.count("error:") == 1
    assert "not a Stable Diffusion folder" in " ".join(result.output.split())
    assert not (tmp_path / "o").exists()


def test_bot_help_does_not_import_diffusers():
    import subprocess
    import sys

    code = "import sys; from thumbview.cli import app; assert 'diffusers' not in sys.modules and 'peft' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_web_panel_generates_ranked_candidates(trained_bot):
    import base64
    import io

    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from PIL import Image

    from thumbview.serve.bot import bot_router

    app = FastAPI()
    app.include_router(bot_router(trained_bot))
    client = TestClient(app, base_url="http://127.0.0.1")
    page = client.get("/bot").text
    assert "bot-form" in page and '<script src="/static/bot.js"' in page  # no inline script: CSP
    from thumbview.serve.app import STATIC_DIR

    assert "/api/bot/generate" in (STATIC_DIR / "bot.js").read_text()
    res = client.post("/api/bot/generate", data={"title": "worst cake ever", "n": 3, "top": 2})
    assert res.status_code == 200, res.text
    cands = res.json()["candidates"]
    assert len(cands) == 2 and cands[0]["log10"] >= cands[1]["log10"]
    assert Image.open(io.BytesIO(base64.b64decode(cands[0]["png"]))).size == (64, 64)
    assert res.json()["no_skill_note"].startswith("no demonstrated skill")  # shown by bot.js
    assert "no_skill_note" in (STATIC_DIR / "bot.js").read_text()
    from thumbview.compare import NO_CHANCE_BEST  # and the page shows "-" for chance best

    assert res.json()["chance_best_shown"] is False and res.json()["rank_labels"] == ["=1"] * 2
    assert res.json()["chance_best_note"] == NO_CHANCE_BEST and 'id="bot-chance-note"' in page
    assert client.post("/api/bot/generate", data={"title": "", "n": 3}).status_code == 422


def test_ctrl_c_saves_finished_epochs_and_resume_continues(tiny_base, bot_model_dir, tmp_path):  # noqa: F811
    """Interrupted after epoch 1 of 2 (draft): epoch 1 is on disk; --resume adds epoch 2."""
    from thumbview.bot.folder import BotConfig, Prompt
    from thumbview.bot.policy import SampleConfig
    from thumbview.bot.train import BotInterrupted, train_bot

    def interrupt(epoch, stats):
        raise KeyboardInterrupt

    sample = SampleConfig(steps=2, eta=0.0, guidance=1.0, height=64, width=64)
    config = BotConfig(epochs=2, batch=1, per_prompt=1, eval_seeds=1, sample=sample)
    prompts = [Prompt("worst cake ever", "cake")]
    with pytest.raises(BotInterrupted) as info:
        train_bot(
            str(tiny_base), bot_model_dir, prompts, tmp_path / "b", config, on_epoch=interrupt
        )
    assert info.value.epochs_done == 1
    assert json.loads((tmp_path / "b" / "bot.json").read_text())["epochs_done"] == 1
    assert (tmp_path / "b" / RUN_UNFINISHED).is_file()  # epoch 1 of 2 is not the bot asked for
    result = train_bot(str(tiny_base), bot_model_dir, prompts, tmp_path / "b", config, resume=True)
    assert not (tmp_path / "b" / RUN_UNFINISHED).exists()
    assert result.epochs_done == 2 and [r["epoch"] for r in result.history] == [1, 2]
    meta = json.loads((tmp_path / "b" / "bot.json").read_text())
    assert meta["method"] == "draft" and "faces" in meta["guards"]["held_fixed"]


def _one_line_refusal(result, bot):
    """A CLI result that is the unfinished-run error: exit 2, one line, no traceback."""
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert "did not finish" in text and "--resume" in text and bot.name in text


def test_a_crashed_bot_train_is_refused_everywhere_until_resume_finishes_it(tiny_base, bot_model_dir, prompts, tmp_path, monkeypatch):  # noqa: F811  # fmt: skip
    """Before: a run that died in epoch 2 of 2 left bot.json, the LoRA and state of epoch 1
    and no sign it stopped: `bot generate`, `bot eval` and `serve --bot` loaded it as the
    bot that was asked for. Now all three refuse it in one line; `--resume` finishes it."""
    import thumbview.bot.train as bot_train
    import thumbview.serve.server as server
    from thumbview.bot.folder import BotConfig, Prompt, read_bot
    from thumbview.bot.generate import LoadedBot
    from thumbview.bot.policy import SampleConfig
    from thumbview.bot.rl import BotError
    from thumbview.serve.bot import bot_router

    evaluate = bot_train._evaluate

    def crash_in_epoch_2(*args):
        if args[-1] == 2:  # the epoch number
            raise RuntimeError("the machine fell over")
        return evaluate(*args)

    monkeypatch.setattr(bot_train, "_evaluate", crash_in_epoch_2)
    sample = SampleConfig(steps=2, eta=0.0, guidance=1.0, height=64, width=64)
    config = BotConfig(epochs=2, batch=1, per_prompt=1, eval_seeds=1, sample=sample)
    bot, titles = tmp_path / "bot", [Prompt("worst cake ever", "cake")]
    with pytest.raises(RuntimeError, match="fell over"):
        bot_train.train_bot(str(tiny_base), bot_model_dir, titles, bot, config)
    assert json.loads((bot / "bot.json").read_text())["epochs_done"] == 1
    assert (bot / RUN_UNFINISHED).is_file()
    for load in (read_bot, LoadedBot.load, bot_router):
        with pytest.raises(BotError, match="did not finish") as info:
            load(bot)
        assert "\n" not in str(info.value) and "bot train ... --resume" in str(info.value)
    _one_line_refusal(invoke("bot", "generate", bot, "--title", "t", "-n", "1"), bot)
    _one_line_refusal(invoke("bot", "eval", bot, "--prompts", prompts, "--model", bot_model_dir), bot)  # fmt: skip
    monkeypatch.setattr(server, "serve", lambda *a: pytest.fail("served an unfinished bot"))
    _one_line_refusal(invoke("serve", "--model", bot_model_dir, "--bot", bot), bot)
    monkeypatch.undo()
    result = bot_train.train_bot(str(tiny_base), bot_model_dir, titles, bot, config, resume=True)
    assert result.epochs_done == 2 and not (bot / RUN_UNFINISHED).exists()
    assert LoadedBot.load(bot).meta["epochs_done"] == 2


def test_cli_ctrl_c_leaves_a_refused_bot_and_the_printed_resume_ends_it(tiny_base, bot_model_dir, prompts, tmp_path, monkeypatch):  # noqa: F811  # fmt: skip
    """Ctrl-C after epoch 1 of 2: exit 130 naming the epochs saved; `bot generate` refuses
    the folder; `--resume --epochs 1`, as the message says, ends the run with epoch 1 and
    the folder then generates."""
    import thumbview.cli.bot as bot_cli

    def ctrl_c_after_each_epoch(epochs):
        def stop(epoch, stats):
            raise KeyboardInterrupt

        return stop

    bot = tmp_path / "bot"
    common = ("bot", "train", "--base", tiny_base, "--model", bot_model_dir, "--prompts",
              prompts, "--out", bot, "--method", "draft", *TINY)  # fmt: skip
    with monkeypatch.context() as patch:
        patch.setattr(bot_cli, "_epoch_reporter", ctrl_c_after_each_epoch)
        stopped = invoke(*common, "--epochs", "2")
    text = " ".join(stopped.output.split())
    assert stopped.exit_code == 130 and "Traceback" not in stopped.output
    assert "1 epoch(s) saved" in text and "--resume --epochs 1" in text
    assert (bot / RUN_UNFINISHED).is_file()
    _one_line_refusal(invoke("bot", "generate", bot, "--title", "t", "-n", "1"), bot)
    ended = invoke(*common, "--epochs", "1", "--resume")
    assert ended.exit_code == 0, ended.output + repr(ended.exception)
    assert "done: 1 epochs" in ended.output and not (bot / RUN_UNFINISHED).exists()
    shown = invoke("bot", "generate", bot, "--title", "t", "-n", "1", "--json")
    assert shown.exit_code == 0 and len(json.loads(shown.stdout)["candidates"]) == 1


# --- issue 24: a tampered bot folder is one clear error, and nothing is lost ----------------

LORA = "pytorch_lora_weights.safetensors"


def _json_edit(name, change):
    def tamper(bot):
        data = json.loads((bot / name).read_text())
        change(data)
        (bot / name).write_text(json.dumps(data))

    return tamper


def _tensor_edit(name, change):
    def tamper(bot):
        from safetensors.torch import load_file, save_file

        tensors = load_file(bot / name)
        change(tensors)
        save_file(tensors, bot / name)

    return tamper


def _first_key(tensors):
    return sorted(tensors)[0]


def _resized(tensors):
    import torch

    key = _first_key(tensors)
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, *tensors[key].shape[1:])


# name -> (tamper, the file the error names, whether `bot generate` / serve --bot read it)
BOT_TAMPERED = {
    "bot.json cut short": (lambda b: (b / "bot.json").write_text('{"format": '), "bot.json", True),
    "unknown setting": (
        _json_edit("bot.json", lambda d: d["config"].update(evil=1)),
        "bot.json",
        True,
    ),  # fmt: skip
    "rank is text": (
        _json_edit("bot.json", lambda d: d["config"].update(lora_rank="4")),
        "bot.json",
        True,
    ),  # fmt: skip
    "NaN learning rate": (
        _json_edit("bot.json", lambda d: d["config"].update(lr=float("nan"))),
        "bot.json",
        True,
    ),  # fmt: skip
    "a huge image": (
        _json_edit("bot.json", lambda d: d["config"]["sample"].update(height=2**20)),
        "bot.json",
        True,
    ),  # fmt: skip
    "history a number": (
        _json_edit("state.json", lambda d: d.update(history=3)),
        "state.json",
        False,
    ),  # fmt: skip
    "history reordered": (
        _json_edit("state.json", lambda d: d["history"].reverse()),
        "state.json",
        False,
    ),  # fmt: skip
    "optimizer cut short": (
        lambda b: (b / "optimizer.safetensors").write_bytes(b"\x10" + b"\0" * 9),
        "optimizer.safetensors",
        False,
    ),  # fmt: skip
    "optimizer of another shape": (
        _tensor_edit("optimizer.safetensors", _resized),
        "optimizer.safetensors",
        False,
    ),  # fmt: skip
    "LoRA cut short": (lambda b: (b / LORA).write_bytes(b"\x10" + b"\0" * 9), LORA, True),
    "LoRA of other shapes": (_tensor_edit(LORA, _resized), LORA, True),
    "LoRA missing a tensor": (_tensor_edit(LORA, lambda t: t.pop(_first_key(t))), LORA, True),
    "LoRA with an extra tensor": (
        _tensor_edit(LORA, lambda t: t.update(extra=t[_first_key(t)].clone())),
        LORA,
        True,
    ),  # fmt: skip
    "LoRA with NaN": (
        _tensor_edit(LORA, lambda t: t[_first_key(t)].fill_(float("nan"))),
        LORA,
        True,
    ),  # fmt: skip
}


def _tampered_copy(trained_bot, tmp_path, case):
    """A copy of the trained bot with `name` tampered wherever it is: in the folder (what
    `bot generate` reads) and in its checkpoint (what `--resume` reads)."""
    import shutil

    from thumbview.bot.train import checkpoints

    tamper, name, read_by_generate = BOT_TAMPERED[case]
    bot = tmp_path / "bot"
    shutil.copytree(trained_bot, bot)
    holders = [f for f in (bot, *checkpoints(bot)) if (f / name).is_file()]
    assert len(holders) == (2 if read_by_generate else 1), holders
    for folder in holders:
        tamper(folder)
    return bot, name, read_by_generate


def _files(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", list(BOT_TAMPERED))
def test_resume_and_load_of_a_tampered_bot_are_one_clear_error(case, trained_bot, tiny_base, bot_model_dir, tmp_path):  # noqa: F811  # fmt: skip
    """Before: KeyError, TypeError, SafetensorError or RuntimeError tracebacks; a LoRA with a
    tensor missing or extra was loaded with a warning; NaN weights sampled black images."""
    from thumbview.bot.folder import BotConfig, Prompt
    from thumbview.bot.generate import LoadedBot
    from thumbview.bot.policy import SampleConfig
    from thumbview.bot.rl import BotError
    from thumbview.bot.train import train_bot

    bot, name, read_by_generate = _tampered_copy(trained_bot, tmp_path, case)
    before = _files(bot)
    sample = SampleConfig(steps=2, guidance=1.5, height=64, width=64)
    config = BotConfig(method="ddpo", epochs=3, batch=1, per_prompt=2, sample=sample)
    with pytest.raises(BotError, match=name):
        train_bot(str(tiny_base), bot_model_dir, [Prompt("t", "p")], bot, config, resume=True)
    if read_by_generate:
        with pytest.raises(BotError, match=name):
            LoadedBot.load(bot)
    assert _files(bot) == before  # nothing rewritten, nothing lost


def test_cli_and_web_refuse_a_lora_of_the_wrong_shapes_in_one_line(trained_bot, tmp_path):
    bot, _, _ = _tampered_copy(trained_bot, tmp_path, "LoRA of other shapes")
    result = invoke("bot", "generate", bot, "--title", "t", "-n", "1", "--out", tmp_path / "o")
    assert result.exit_code == 2 and result.output.count("error:") == 1
    assert "does not fit this base model and LoRA rank" in " ".join(result.output.split())
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
    from thumbview.serve.bot import bot_router

    # a LoRA of another rank is refused from its header when serve starts (issue 30)
    with pytest.raises(ValueError, match="does not fit this base model and LoRA rank"):
        bot_router(bot)
    bad, _, _ = _tampered_copy(trained_bot, tmp_path / "j", "unknown setting")
    with pytest.raises(ValueError, match="unknown settings evil"):
        bot_router(bad)  # serve --bot fails at start-up, before announcing its address
