"""The ``lm`` subcommand of pez_core.cli: the demo, polishing, and hostile input (clear errors, early, and
never a lost prompt)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from pez_core import PezError  # noqa: E402
from pez_core import lm as L  # noqa: E402
from tiny_lm import TEMPLATE, VERBALIZER, examples, needs_demo  # noqa: E402


@needs_demo
@pytest.mark.slow
def test_demo_cli_lifts_accuracy_and_fluency_lowers_perplexity(capsys):
    from pez_core.cli import main

    rows = {}
    for weight in ("0", "1"):
        assert main(["lm", "--demo", "--fluency", weight, "--json"]) == 0  # the "done when", same seed
        rows[weight] = json.loads(capsys.readouterr().out)
    plain, fluent = rows["0"], rows["1"]
    assert plain["valid_accuracy"] >= plain["template_accuracy"] + 0.15
    assert fluent["perplexity"] < plain["perplexity"]
    assert plain["transfer"][0]["lm"].endswith(L.DEMO_TRANSFER_LM)
    assert set(plain) >= {"prompt", "valid_accuracy", "template_accuracy", "perplexity", "steps", "seconds"}


def test_cli_lm_reports_bad_input(tmp_path, caplog):
    from pez_core.cli import main

    (tmp_path / "t.jsonl").write_text('{"text": "hi", "label": "maybe"}\n')
    assert main(["lm", "--lm", "x", "--train", str(tmp_path / "t.jsonl"), "--template", TEMPLATE,
                 "--verbalizer", VERBALIZER]) == 2
    assert "label 'maybe' is not in the verbalizer" in caplog.text
    assert main(["lm", "--train", "x.jsonl"]) == 2
    assert "--lm" in caplog.text


@needs_demo
def test_cli_lm_polishes_as_asked(capsys, caplog):
    from pez_core.cli import main

    rows = {}
    for polish in ("off", "prune"):
        assert main(["lm", "--demo", "--steps", "3", "--restarts", "1", "--polish", polish, "--json"]) == 0
        rows[polish] = json.loads(capsys.readouterr().out)
    assert rows["off"]["polish"] == "off" and rows["off"]["unpolished_prompt"] is None
    pruned = rows["prune"]
    assert pruned["unpolished_prompt"] == rows["off"]["prompt"]  # the same loop, then pruning
    assert len(pruned["token_ids"]) <= len(rows["off"]["token_ids"])
    assert main(["lm", "--demo", "--steps", "3", "--time-budget", "0"]) == 2
    assert "time budget must be a number of seconds above 0" in caplog.text


def _cli_args(tiny_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in examples(6)))
    return ["lm", "--lm", str(tiny_dir), "--train", str(train), "--template", TEMPLATE, "--verbalizer", VERBALIZER,
            "--prompt-len", "2", "--steps", "2", "--restarts", "1", "--polish", "off", "--device", "cpu", *extra]


@pytest.fixture
def no_training(monkeypatch):
    """Input errors must be found before training: reaching it fails the test (and takes no time)."""
    def trained(*args, **kwargs):
        raise AssertionError("training started")
    monkeypatch.setattr(L, "learn_prompt", trained)


def test_cli_lm_checks_eval_lms_before_training(tiny_dir, tmp_path, caplog, monkeypatch, no_training):
    from pez_core.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for typo, message in ((str(tmp_path / "nowhere"), "language model folder not found"),
                          ("gtp2-typo", "cannot load language model 'gtp2-typo'"),
                          (str(tiny_dir / "config.json"), "is a file; give the model's folder")):
        caplog.clear()
        assert main(_cli_args(tiny_dir, tmp_path, "--eval-lm", typo)) == 2
        assert message in caplog.text


def test_cli_lm_prints_the_prompt_when_an_eval_lm_fails_after_training(tiny_dir, tmp_path, capsys, caplog):
    """An LM that passes the early check (its config is there) but cannot load (no weights): the learned
    prompt still reaches stdout, the error is logged, the exit status says something failed."""
    from pez_core.cli import main

    broken = tmp_path / "no-weights"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_dir / "config.json").read_text())
    assert main(_cli_args(tiny_dir, tmp_path, "--eval-lm", str(broken), "--eval-lm", str(tiny_dir), "--json")) == 2
    row = json.loads(capsys.readouterr().out)
    assert row["prompt"] and row["transfer"][0]["lm"] == str(broken) and "error" in row["transfer"][0]
    assert row["transfer"][1]["valid_accuracy"] == pytest.approx(row["valid_accuracy"])  # the same LM, scored
    assert f"--eval-lm {broken}: cannot load language model" in caplog.text
    assert main(_cli_args(tiny_dir, tmp_path, "--eval-lm", str(broken))) == 2
    lines = capsys.readouterr().out.splitlines()
    assert "(accuracy" in lines[0] and lines[1] == f"  on {broken}: not scored (the error follows)"


@pytest.mark.parametrize("extra,message", [
    (["--steps", "0"], "steps must be an integer from 1"),
    (["--restarts", "0"], "restarts must be an integer from 1"),
    (["--shots", "0"], "--shots must be at least 1"),
    (["--shots", "-2"], "--shots must be at least 1"),
    (["--prompt-len", "100"], "prompt length must be an integer from 1 to 75"),
    (["--prompt-len", "0"], "prompt length must be an integer from 1 to 75"),
    (["--device", "cuda"], "no CUDA GPU is available"),
])
def test_cli_lm_refuses_bad_numbers_and_devices(tiny_dir, tmp_path, caplog, monkeypatch, no_training, extra, message):
    from pez_core.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the machine without a GPU
    assert main(_cli_args(tiny_dir, tmp_path, *extra)) == 2
    assert message in caplog.text
    assert "CLIP" not in caplog.text  # the LM path speaks of LMs


@needs_demo
@pytest.mark.parametrize("flag", ["--steps", "--restarts"])
def test_cli_lm_demo_refuses_zero_instead_of_its_default(caplog, no_training, flag):
    from pez_core.cli import main

    assert main(["lm", "--demo", flag, "0"]) == 2
    assert f"{flag[2:]} must be an integer from 1" in caplog.text


def test_cli_lm_says_a_directory_is_not_a_data_file(tiny_dir, tmp_path, caplog, no_training):
    from pez_core.cli import main

    args = _cli_args(tiny_dir, tmp_path)
    args[args.index("--train") + 1] = str(tmp_path)
    assert main(args) == 2
    assert f"data file {tmp_path} is a directory; give a .csv or .jsonl file" in caplog.text


def test_cli_lm_error_starts_on_a_line_of_its_own(tiny_dir, tmp_path, capsys, monkeypatch):
    """An error during training is logged after the progress bar has ended its line."""
    import logging

    from pez_core.cli import main
    from pez_core import Progress

    def stopped(*args):
        args[-1](Progress(step=1, total=2, similarities=[0.5], prompts=["a prompt"]))  # the bar is drawn
        raise PezError("stopped mid-run")
    monkeypatch.setattr(L, "learn_prompt", stopped)
    handler = logging.StreamHandler(sys.stderr)  # capsys's stderr, where the bar is drawn too
    logging.getLogger("pez_core").addHandler(handler)
    try:
        assert main(_cli_args(tiny_dir, tmp_path)) == 2
    finally:
        logging.getLogger("pez_core").removeHandler(handler)
    err = capsys.readouterr().err
    assert "step" in err and "stopped mid-run\n" in err.splitlines(keepends=True)
