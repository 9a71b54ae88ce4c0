"""PEZ for causal language models (pez_core.lm): mechanics on random-weight tiny GPT-2s, data files,
the CLI, and what the bundled demo LM scores."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from pez_core import PezConfig, PezError, search  # noqa: E402
from pez_core import lm as L  # noqa: E402
from pez_core.engine.loop import Run, straight_through  # noqa: E402
from pez_core.lm.data import Example, few_shot, load_examples, parse_verbalizer  # noqa: E402

WORDS = ("good bad great terrible film movie was it the a and very not so honest verdict red blue cat dog "
         "runs sits quick slow happy sad").split()
VERBALIZER = "positive:great,negative:terrible"
TEMPLATE = "{input} {prompt} it was"


def _random_lm(folder: Path, seed: int, width: int = 32) -> Path:
    """A random-weight GPT-2 with a byte-level BPE trained here on a few words, saved in HF format."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) + " , ." for i in range(len(WORDS))]
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>")
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=width, n_layer=2, n_head=2,
                                       bos_token_id=0, eos_token_id=0))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return _random_lm(tmp_path_factory.mktemp("tiny-gpt2"), seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> L.LanguageModel:
    torch.set_num_threads(1)
    return L.load_lm(tiny_dir, device="cpu")


def _examples(n: int = 6) -> list[Example]:
    texts = ["the film was good", "a very bad movie", "it was so happy", "the cat was sad", "quick and good",
             "slow and bad", "red dog runs", "blue cat sits"]
    return [Example(texts[i % len(texts)], ("positive", "negative")[i % 2]) for i in range(n)]


def _scorer(lm, fluency=0.0, **kw) -> L.LmScorer:
    train = _examples()
    return L.LmScorer(lm, TEMPLATE, VERBALIZER, train, train, fluency=fluency, batch_size=len(train), **kw)


def _words_prompt(scorer, n: int = 4) -> list[int]:
    return scorer.allowed[torch.arange(n) * 3 % len(scorer.allowed)].tolist()


def test_gradient_path_matches_the_string_it_decodes_to(tiny):
    """The embedding path (template pieces + prompt rows) gives the loss, accuracy and prompt NLL that the
    decoded, re-tokenized string gets from the full model: what is optimised is what is reported."""
    scorer = _scorer(tiny, fluency=1.0)
    ids = _words_prompt(scorer)
    text = scorer.decode(ids)
    assert scorer.tokenize(text) == ids  # whole-word tokens round-trip through the template's space
    prompt = scorer.table[torch.tensor(ids)].float()[None]
    label_gain, accuracy = _scorer(tiny).gains(prompt, torch.zeros(1, dtype=torch.long))
    gain, _ = scorer.gains(prompt, torch.zeros(1, dtype=torch.long))
    score = L.evaluate_prompt(tiny, TEMPLATE, VERBALIZER, _examples(), text)
    assert float(-label_gain) == pytest.approx(score.loss, rel=1e-4)
    assert float(accuracy) == pytest.approx(score.accuracy)
    assert float(label_gain - gain) == pytest.approx(score.nll, rel=1e-4)  # fluency 1 subtracts the prompt NLL


def test_prompt_nll_is_the_models_own_next_token_loss(tiny):
    """Independent reference: the full model's logits over the filled template's token ids."""
    scorer = _scorer(tiny)
    ids = _words_prompt(scorer, 3)
    text = scorer.decode(ids)
    nll = []
    for example in _examples():
        head, _, _ = scorer.template.parts(example.text)
        seq = [tiny.start_id] + tiny.encode(head) + ids
        logp = tiny.model(input_ids=torch.tensor([seq])).logits[0].log_softmax(-1)
        nll += [-float(logp[len(seq) - 4 + j, ids[j]]) for j in range(3)]
    score = L.evaluate_prompt(tiny, TEMPLATE, VERBALIZER, _examples(), text)
    assert score.nll == pytest.approx(sum(nll) / len(nll), rel=1e-4)
    assert score.perplexity == pytest.approx(math.exp(score.nll))
    assert L.evaluate_prompt(tiny, TEMPLATE, VERBALIZER, _examples(), "").perplexity is None


def test_prompts_scored_together_score_as_each_alone(tiny, monkeypatch):
    """Polishing scores many candidates at once: batches that mix several prompts' templates (and the
    template alone) must give each prompt exactly its own accuracy, loss and perplexity."""
    scorer = _scorer(tiny)
    prompts = [scorer.decode(_words_prompt(scorer, n)) for n in (3, 1, 5)] + ["", "great"]
    alone = [L.evaluate_prompt(tiny, TEMPLATE, VERBALIZER, _examples(), p) for p in prompts]
    monkeypatch.setattr(L.task, "EVAL_BATCH", 7)  # batches that cut across prompts
    together = L.evaluate_prompts(tiny, TEMPLATE, VERBALIZER, _examples(), prompts)
    for a, t in zip(alone, together):
        assert t.accuracy == pytest.approx(a.accuracy) and t.loss == pytest.approx(a.loss, rel=1e-5)
        assert (t.nll is None) == (a.nll is None) and (a.nll is None or t.nll == pytest.approx(a.nll, rel=1e-5))
    assert len({round(t.loss, 6) for t in together}) == len(prompts)  # the prompts do differ


def test_straight_through_gradient_is_the_gradient_at_the_hard_prompt(tiny):
    scorer = _scorer(tiny, fluency=0.5)
    hard = scorer.table[torch.tensor(_words_prompt(scorer))].float()[None]
    soft = (hard + 0.05 * torch.randn(hard.shape, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    at_hard = hard.clone().requires_grad_(True)
    problems = torch.zeros(1, dtype=torch.long)
    gain_st, _ = scorer.gains(straight_through(soft, hard), problems)
    scorer._layout.calls.zero_()  # the same batch again
    gain_hard, _ = scorer.gains(at_hard, problems)
    gain_st.sum().backward()
    gain_hard.sum().backward()
    assert float(gain_st.detach()) == pytest.approx(float(gain_hard.detach()), rel=1e-5)
    assert torch.allclose(soft.grad, at_hard.grad, atol=1e-6)
    assert soft.grad.abs().sum() > 0


def test_fluency_weight_changes_the_objective_and_its_gradient(tiny):
    prompt = _scorer(tiny).table[torch.tensor(_words_prompt(_scorer(tiny)))].float()[None]
    grads, gains = [], []
    for weight in (0.0, 2.0):
        x = prompt.clone().requires_grad_(True)
        gain, _ = _scorer(tiny, fluency=weight).gains(x, torch.zeros(1, dtype=torch.long))
        gain.sum().backward()
        grads.append(x.grad)
        gains.append(float(gain.detach()))
    text = _scorer(tiny).decode(_words_prompt(_scorer(tiny)))
    nll = L.evaluate_prompt(tiny, TEMPLATE, VERBALIZER, _examples(), text).nll
    assert gains[0] - gains[1] == pytest.approx(2.0 * nll, rel=1e-4)
    assert not torch.allclose(grads[0], grads[1])


@pytest.mark.parametrize("vocab,blocklist,allowlist", [("words", "good,the", None), ("full", None, "cat,dog,red")])
def test_projection_and_result_use_only_allowed_tokens(tiny, vocab, blocklist, allowlist):
    scorer = _scorer(tiny, vocab=vocab, blocklist=blocklist, allowlist=allowlist)
    allowed = set(scorer.allowed.tolist())
    texts = L.token_texts(tiny.tokenizer)
    if allowlist:
        assert {texts[i].strip() for i in allowed} <= {"cat", "dog", "red"}
    else:
        assert all(texts[i][0] == " " and texts[i][1:].isalpha() for i in allowed)
        assert not {texts[i].strip() for i in allowed} & {"good", "the"}
    config = PezConfig(prompt_len=4, steps=4, restarts=2, seed=3, vocab=vocab, blocklist=blocklist, allowlist=allowlist)
    run = Run(scorer, config.for_device(scorer.device))
    ids = run.project(torch.randn(5, 4, scorer.table.shape[1], generator=torch.Generator().manual_seed(0)))
    assert set(ids.flatten().tolist()) <= allowed
    [result] = search(scorer, config)
    assert set(result.token_ids) <= allowed or allowlist  # an allowlist's pieces may merge when re-tokenized
    assert result.token_ids == scorer.tokenize(result.prompt)


def test_result_reports_the_accuracy_of_its_string(tiny):
    train = _examples(8)
    result = L.learn_prompt(tiny, TEMPLATE, VERBALIZER, train[:6], train, PezConfig(prompt_len=3, steps=6, restarts=2))
    score = L.evaluate_prompt(tiny, TEMPLATE, VERBALIZER, train, result.prompt)
    assert result.similarity == pytest.approx(score.accuracy)


def test_same_seed_same_prompt_and_batches_follow_the_seed(tiny):
    config = PezConfig(prompt_len=3, steps=8, restarts=2, seed=5)
    train = _examples(8)
    runs = [L.learn_prompt(tiny, TEMPLATE, VERBALIZER, train, None, config, fluency=0.3, batch_size=3)
            for _ in range(2)]
    assert runs[0].prompt == runs[1].prompt and runs[0].token_ids == runs[1].token_ids
    orders = [L.LmScorer(tiny, TEMPLATE, VERBALIZER, train, batch_size=3, seed=s).layout(3).order for s in (5, 5, 6)]
    assert torch.equal(orders[0], orders[1]) and not torch.equal(orders[0], orders[2])
    first_epoch = orders[0][:len(train) // 3].flatten().tolist()
    assert orders[0].shape[1] == 3 and len(first_epoch) == len(set(first_epoch))  # no example twice in an epoch


def test_template_and_verbalizer_errors(tiny):
    with pytest.raises(PezError, match="prompt"):
        L.Template("{input} it was")
    with pytest.raises(PezError, match="input"):
        L.Template("{input} {input} {prompt}")
    assert L.Template("{input} {prompt} it was").fill(" a b ", "") == "a b it was"
    assert L.Template("{prompt} {input} it was").fill("a b", "p q") == "p q a b it was"
    for bad in ("positive=great,negative=bad", "positive:great", "positive:,negative:bad", "a:x,a:y"):
        with pytest.raises(PezError):
            parse_verbalizer(bad)
    assert parse_verbalizer("pos: great|good ,neg:bad") == {"pos": ["great", "good"], "neg": ["bad"]}
    with pytest.raises(PezError, match="first token"):
        L.Verbalizer(tiny, "positive:great,negative:great")
    with pytest.raises(PezError, match="not in the verbalizer"):
        L.LmScorer(tiny, TEMPLATE, VERBALIZER, [Example("a", "neutral")])
    with pytest.raises(PezError, match="fluency"):
        L.LmScorer(tiny, TEMPLATE, VERBALIZER, _examples(), fluency=-1)


@pytest.mark.parametrize("name,content,message", [
    ("a.csv", "words,label\nhi,positive\n", "lacks column"),
    ("b.jsonl", '{"text": "hi", "label": "positive"}\n{"text": "ok", "label": "neutral"}\n', "line 2: label 'neutral'"),
    ("c.jsonl", '{"text": "  ", "label": "positive"}\n', "line 1: the text is empty"),
    ("d.jsonl", '{"text": "hi", "label": "positive"}\nnot json\n', "line 2: not a JSON object"),
    ("e.jsonl", '{"label": "positive"}\n', "line 1: missing text"),
    ("f.csv", "text,label\n", "holds no examples"),
    ("g.jsonl", "[1, 2]\n", "expected a JSON object"),
    ("h.csv", "text,label\nfine,positive\n,negative\n", "line 3: the text is empty"),
])
def test_bad_data_files_name_the_problem(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PezError, match=message) as error:
        load_examples(path, ["positive", "negative"])
    assert name in str(error.value)


def test_data_files_and_few_shot(tmp_path):
    (tmp_path / "d.csv").write_text('text,label\n"good, very",positive\nbad,negative\nfine,positive\n')
    (tmp_path / "d.jsonl").write_text('{"text": "good, very", "label": "positive"}\n\n'
                                      '{"text": "bad", "label": "negative"}\n')
    csv_rows = load_examples(tmp_path / "d.csv", ["positive", "negative"])
    assert csv_rows[0] == Example("good, very", "positive") and len(csv_rows) == 3
    assert load_examples(tmp_path / "d.jsonl", ["positive", "negative"]) == csv_rows[:2]
    with pytest.raises(PezError, match="not found"):
        load_examples(tmp_path / "missing.jsonl", ["positive"])
    shots = few_shot(csv_rows, 1, seed=0)
    assert sorted(e.label for e in shots) == ["negative", "positive"]
    with pytest.raises(PezError, match="'negative' has 1"):
        few_shot(csv_rows, 2)


def test_without_transformers_lm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(PezError, match=r"pip install \"pez-hard-prompts\[lm\]\""):
        L.load_lm("gpt2")


def test_offline_unknown_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PezError, match="cannot load language model"):
        L.load_lm(str(tmp_path / "nowhere"))


# ---- the bundled demo LM ----

DEMO = L.bundled_lm(L.DEMO_LM)
needs_demo = pytest.mark.skipif(not (DEMO / "model.safetensors").is_file(), reason="bundled tiny LM not built")


@needs_demo
def test_bundled_lms_load_through_from_pretrained_and_stay_small():
    for name in (L.DEMO_LM, L.DEMO_TRANSFER_LM):
        folder = L.bundled_lm(name)
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    size = sum(p.stat().st_size for name in (L.DEMO_LM, L.DEMO_TRANSFER_LM) for p in L.bundled_lm(name).iterdir())
    assert size < 10 * 2 ** 20


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


@needs_demo
def test_benchmark_script_runs_end_to_end(tmp_path):
    """A few steps only: the script and its table, not the figures."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(root)) if p)}
    done = subprocess.run([sys.executable, "benchmarks/lm.py", "--seeds", "0", "--fluency", "0", "1", "--steps", "3",
                           "--restarts", "1", "--random", "2", "--polish", "prune", "--json", str(tmp_path / "runs.json")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == ["| template alone", "| random prompts", "| PEZ",
                                                              "| PEZ + fluency 1"]
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert len(runs["random prompts"]) == 2 and "not measured" in done.stdout


def test_too_long_examples_are_refused_by_name(tiny):
    long = [Example("good " * 70, "positive"), Example("bad", "negative")]
    with pytest.raises(PezError, match="reads at most 64"):
        L.LmScorer(tiny, TEMPLATE, VERBALIZER, long).layout(4)
    with pytest.raises(PezError, match="example 'good good"):
        L.evaluate_prompt(tiny, TEMPLATE, VERBALIZER, long, "")


def test_fluency_pulls_each_prompt_token_towards_what_the_lm_expects(tiny, monkeypatch):
    """With tied embeddings the NLL's own-token logit is written with the prompt row: the last prompt token,
    which predicts no other prompt token, still gets a fluency gradient (through the context alone it would
    get none). The value is the same either way."""
    scorer = _scorer(tiny, fluency=1.0)
    assert scorer.tied
    prompt = scorer.table[torch.tensor(_words_prompt(scorer))].float()[None]
    lay = scorer.layout(prompt.shape[1])
    seen = []
    for tied in (True, False):
        monkeypatch.setattr(L.LmScorer, "tied", property(lambda self, t=tied: t))
        x = prompt.clone().requires_grad_(True)
        embeds = torch.where(lay.is_prompt[None, :, :, None], x[:, lay.slot], scorer.table[lay.ids].float())
        hidden = tiny.hidden(embeds.flatten(0, 1)).view(1, *lay.ids.shape, -1)
        nll = scorer._prompt_nll(x, hidden, lay.prompt_start)
        nll.sum().backward()
        seen.append((float(nll.detach()), x.grad[0, -1].abs().sum().item()))
    assert seen[0][0] == pytest.approx(seen[1][0], rel=1e-5)
    assert seen[0][1] > 0 and seen[1][1] == 0


# ---- the lm command line on hostile input: clear errors, early, and never a lost prompt ----

def _cli_args(tiny_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in _examples(6)))
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
