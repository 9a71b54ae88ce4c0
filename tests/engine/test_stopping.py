"""The stopping rules (pez_core.engine.stopping): progress callbacks and their stop, patience, the time
budget, the target similarity, and how they reach polishing."""
from __future__ import annotations

import pytest

import pez_core
from pez_core import PezConfig
from helpers import planted_problem, string_gain


def test_progress_callback_and_stop(model):
    seen = []

    def callback(progress):
        seen.append((progress.step, progress.total, progress.similarity, progress.prompt))
        return progress.step >= 40

    result = pez_core.distill(model, "a blue star", PezConfig(prompt_len=4, steps=1000, sync_every=20), callback=callback)
    assert [s[0] for s in seen] == [20, 40] and seen[0][1] == 1000
    assert result.steps == 40 and result.stopped_early and seen[-1][3]


def test_plateau_patience_stops_early(model):
    result = pez_core.distill(model, "a blue star", PezConfig(prompt_len=2, steps=5000, patience=100,
                                                              allowlist="blue, star"))
    assert result.steps < 5000 and result.stopped_early


def test_time_budget_ends_a_long_run_with_its_best(model):
    objective, _ = planted_problem(model, length=8, seed=2)
    result = pez_core.optimize(model, objective, PezConfig(prompt_len=8, steps=100_000, time_budget=1.5))[0]
    assert result.stopped_early and result.steps < 100_000
    assert result.similarity >= result.unpolished_similarity - 1e-6


def test_target_similarity_stops_once_the_string_reaches_it(model):
    objective, random_best = planted_problem(model, length=8, seed=3)
    target = random_best + (1 - random_best) / 2
    result = pez_core.optimize(model, objective, PezConfig(prompt_len=8, steps=5000, target_similarity=target,
                                                           polish="off"))[0]
    assert result.stopped_early and result.steps < 5000
    assert result.similarity >= target and result.similarity == pytest.approx(string_gain(model, objective, result.prompt),
                                                                              abs=1e-5)


def test_polishing_shows_in_progress_and_a_stop_keeps_the_best(model):
    objective, _ = planted_problem(model, length=8, seed=4)
    stages = []

    def callback(progress):
        stages.append(progress.stage)
        return progress.stage == "polishing"  # stop at the first polishing report

    result = pez_core.optimize(model, objective, PezConfig(prompt_len=8, steps=6), callback=callback)[0]
    assert stages[0] == "pez" and stages[-1] == "polishing" and stages.count("polishing") == 1
    assert result.prompt == result.unpolished_prompt and result.similarity == pytest.approx(result.unpolished_similarity)


def test_a_cancel_while_polishing_propagates(model):
    objective, _ = planted_problem(model, length=8, seed=4)

    def callback(progress):
        if progress.stage == "polishing":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pez_core.optimize(model, objective, PezConfig(prompt_len=8, steps=4), callback=callback)
