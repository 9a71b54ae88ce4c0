"""The PEZ loop (pez_core.engine.loop) on tiny random-weight CLIPs: projection, steps and schedule, batches,
memory, seeds, the strings it returns, the kick budget it hands polishing."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

import pez_core
from pez_core import Objective, PezConfig, PezError
from pez_core.common import devices
from pez_core.engine import ACTIVATION_ELEMENTS
from pez_core.engine import loop as engine
from helpers import clip_run, planted_problem, write_tiny_checkpoint


def test_projection_picks_nearest_allowed_token(model):
    run = clip_run(model, Objective.stack([[(torch.randn(32), 1.0)]]), PezConfig(vocab="words", blocklist="dog"))
    table = model.token_embeddings
    # a point next to a banned token ("dog") must land on an allowed one, its nearest by cosine
    dog = model.tokenize("dog")[0]
    query = table[dog][None, None] + 1e-3 * torch.randn(1, 1, table.shape[1])
    chosen = int(run.project(query)[0, 0])
    assert chosen != dog and chosen in set(run.allowed.tolist())
    cosines = torch.nn.functional.normalize(table[run.allowed], dim=-1) @ torch.nn.functional.normalize(query[0, 0], dim=0)
    assert chosen == int(run.allowed[cosines.argmax()])
    # an allowed token projects to itself
    word = model.tokenize("circle")[0]
    assert int(run.project(table[word][None, None])[0, 0]) == word


def test_projection_in_row_chunks_is_exact(model, monkeypatch):
    run = clip_run(model, Objective.stack([[(torch.randn(32), 1.0)]]), PezConfig(vocab="full"))
    queries = torch.randn(3, 7, model.token_embeddings.shape[1], generator=torch.Generator().manual_seed(2))
    whole = run.project(queries)
    monkeypatch.setattr(engine, "PROJECTION_SCORES_MAX", 2 * len(run.allowed))  # 2 rows per chunk
    assert torch.equal(run.project(queries), whole) and whole.shape == (3, 7)


def test_cosine_schedule_is_torchs_cosine_annealing(model):
    """The in-place (CUDA-graph-safe) cosine schedule moves the prompt exactly as CosineAnnealingLR does."""
    objective = Objective.stack([[(torch.randn(32, generator=torch.Generator().manual_seed(5)), 1.0)]])
    ours = clip_run(model, objective, PezConfig(steps=12, lr_schedule="cosine"))
    torchs = clip_run(model, objective, PezConfig(steps=12))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(torchs.optimizer, T_max=12)
    lrs = []
    with torch.enable_grad():
        for _ in range(12):
            ours.step()
            torchs.step()
            scheduler.step()
            lrs.append(float(ours.lr))
            assert float(ours.lr) == pytest.approx(float(torchs.optimizer.param_groups[0]["lr"]), abs=1e-6)
    assert lrs[0] < 0.1 and lrs[-1] == pytest.approx(0, abs=1e-7) and lrs == sorted(lrs, reverse=True)
    assert torch.allclose(ours.soft_prompt, torchs.soft_prompt, atol=1e-5)


def test_small_batches_find_the_same_prompts(model, monkeypatch):
    """Problems go through the text tower a few at a time when memory is short: same prompts, same starts."""
    g = torch.Generator().manual_seed(4)
    objective = Objective.stack([[(torch.randn(32, generator=g), 1.0)] for _ in range(3)])
    config = PezConfig(steps=40, restarts=2, prompt_len=6, seed=1)
    whole = pez_core.optimize(model, objective, config)
    assert len(clip_run(model, objective, config).batches) == 1
    per_prompt = ACTIVATION_ELEMENTS * (6 + 2) * model.text_width * model.text_layers * 4
    with monkeypatch.context() as short:
        short.setattr(devices, "free_memory", lambda device: 2 * 2 * per_prompt)  # half of it: 2 prompts
        assert clip_run(model, objective, config).scorer.prompts_that_fit(6) == 2
    monkeypatch.setattr(pez_core.ClipScorer, "prompts_that_fit", lambda self, prompt_len: 2)
    assert clip_run(model, objective, config).batches == [slice(0, 2), slice(2, 4), slice(4, 6)]
    split = pez_core.optimize(model, objective, config)
    assert [r.token_ids for r in split] == [r.token_ids for r in whole]
    assert [r.similarity for r in split] == pytest.approx([r.similarity for r in whole], abs=1e-5)


def test_planted_prompt_recovery(model):
    # PEZ and random search each evaluate the text tower 400 times; measured on this model PEZ
    # lands ~10x closer to the planted prompt (1 - cos ~0.001 vs ~0.01): demand at least 3x.
    objective, random_best = planted_problem(model, length=8, seed=1)
    result = pez_core.optimize(model, objective, PezConfig(prompt_len=8, steps=400, seed=0))[0]
    assert 1 - result.similarity < (1 - random_best) / 3, (result.similarity, random_best)


def test_same_seed_same_prompt(model):
    config = PezConfig(prompt_len=6, steps=40, seed=7, restarts=2)
    first = pez_core.distill(model, "a small green square", config)
    second = pez_core.distill(model, "a small green square", config)
    other = pez_core.distill(model, "a small green square", PezConfig(prompt_len=6, steps=40, seed=8, restarts=2))
    assert (first.prompt, first.token_ids) == (second.prompt, second.token_ids)
    assert other.prompt != first.prompt


def test_a_slow_loop_gives_the_same_prompt(model):
    """Without a time budget nothing depends on time: a PEZ loop slowed down, as on a busy machine, ends in
    the same prompt, polishing included (polishing's kicks count strings scored, not seconds)."""
    config = PezConfig(prompt_len=8, steps=40, seed=3)

    def slow(progress):
        if progress.stage == "pez":
            time.sleep(0.1)

    quick = pez_core.distill(model, "a small green square on a white background", config)
    slowed = pez_core.distill(model, "a small green square on a white background", config, callback=slow)
    assert (slowed.prompt, slowed.token_ids, slowed.similarity) == (quick.prompt, quick.token_ids, quick.similarity)


def test_seeds_apart_by_2_to_the_32_start_apart(model):
    """ComfyUI's seed widget allows 64 bits; a generator that keeps only 32 would give seed s and s + 2**32
    one start (the loop's own prompt, before polishing, shows it)."""
    config = PezConfig(prompt_len=6, steps=2, polish="off")
    prompts = {pez_core.distill(model, "a red circle", dataclasses.replace(config, seed=seed)).prompt
               for seed in (5, 5 + 2**32, 5 + 2**63)}
    assert len(prompts) == 3


def test_returned_prompt_is_tokenization_safe(model):
    # the full vocabulary has sub-word pieces whose decoded string re-tokenizes differently
    results = pez_core.invert(model, [np.random.default_rng(0).random((32, 32, 3))],
                              PezConfig(prompt_len=8, steps=20, vocab="full", restarts=3))
    for result in results:
        assert model.tokenize(result.prompt) == result.token_ids
        with torch.no_grad():
            rescored = float(pez_core.score(model, result.prompt, [np.random.default_rng(0).random((32, 32, 3))])[0, 0])
        assert abs(rescored - result.similarity) < 1e-5


def test_a_run_that_cannot_fit_is_refused_naming_what_to_lower(monkeypatch, tmp_path):
    model = pez_core.load_model(str(write_tiny_checkpoint(tmp_path)), device="cpu")
    objective = pez_core.Objective.stack([[(model.encode_texts(["a red circle"])[0], 1.0)]] * 4)
    scorer = pez_core.ClipScorer(model, objective)
    config = PezConfig(prompt_len=75, restarts=64, steps=2)
    monkeypatch.setattr(devices, "free_memory", lambda device: 200 << 20)  # a machine with 200 MiB free
    with pytest.raises(PezError) as error:
        engine.check_memory(scorer, config.for_device(model.device))
    message = str(error.value)
    assert "GiB are free; lower restarts from 64 to" in message and "prompt_length from 75 to" in message
    fitting = int(message.split("restarts from 64 to ")[1].split(",")[0])
    engine.check_memory(scorer, PezConfig(prompt_len=75, restarts=fitting).for_device(model.device))  # it fits
    with pytest.raises(PezError):
        engine.check_memory(scorer, PezConfig(prompt_len=75, restarts=fitting + 1).for_device(model.device))


def test_kicks_get_a_work_budget_without_a_time_budget_and_all_of_a_time_budget(model, monkeypatch):
    budgets = []
    polish = engine.polish_prompts

    def recording(*args, **kwargs):
        budgets.append(kwargs["kick_budget"])
        return polish(*args, **kwargs)

    monkeypatch.setattr(engine, "polish_prompts", recording)
    objective, _ = planted_problem(model, length=4, seed=2)
    pez_core.optimize(model, objective, PezConfig(prompt_len=4, steps=20, restarts=3))
    pez_core.optimize(model, objective, PezConfig(prompt_len=4, steps=20, time_budget=600))
    # without a budget: strings worth the prompts the loop scored (20 steps x 3 restarts)
    per_prompt = pez_core.ClipScorer.strings_per_step_prompt
    assert budgets[0] == int(engine.KICK_WORK_SHARE * 20 * 3 * per_prompt)
    assert budgets[1] is None  # the budget's own deadline ends the kicks


# ComfyUI runs every node under torch.inference_mode(): loading and optimising must still work
def test_load_and_optimise_under_inference_mode(tmp_path):
    with torch.inference_mode():
        model = pez_core.load_model(str(write_tiny_checkpoint(tmp_path, "inference")), device="cpu")
        image = torch.rand(1, 32, 32, 3)  # an inference tensor, as ComfyUI hands images to nodes
        [result] = pez_core.invert(model, image, PezConfig(prompt_len=4, steps=5))
    assert result.prompt and result.steps == 5
