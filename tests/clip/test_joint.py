"""One prompt for several CLIPs (pez_core.clip.joint) on tiny random towers of different widths sharing the tokenizer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pez_core
from pez_core import Objective, PezConfig, PezError
from pez_core.clip import joint
from pez_core.engine import loop as engine
from pez_core.common import devices as devices_module
from pez_core.engine import scorer as scorer_module
from helpers import write_variant
from paths import REPO_ROOT

TEXT = "a red circle on a white background"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("joint")
    return (pez_core.load_model(write_variant(folder, "tiny-a", 16, 32, 0), device="cpu"),
            pez_core.load_model(write_variant(folder, "tiny-b", 24, 40, 1), device="cpu"))


def text_similarities(models, prompt: str, text: str = TEXT) -> list[float]:
    return [float(s[0, 0]) for s in pez_core.score_each(list(models), prompt, other_texts=text)]


def test_one_model_behaves_exactly_as_today(pair):
    a, _ = pair
    config = PezConfig(prompt_len=5, steps=40, seed=3, restarts=2)
    alone = pez_core.distill(a, TEXT, config)
    listed = pez_core.distill([a], TEXT, config)
    assert type(alone) is pez_core.PezResult  # a plain model keeps the plain result
    assert (listed.prompt, listed.token_ids) == (alone.prompt, alone.token_ids)
    assert listed.similarity == pytest.approx(alone.similarity, abs=1e-6)
    assert listed.similarities == pytest.approx([alone.similarity], abs=1e-6)


def test_projection_maximises_the_weighted_sum_of_cosines(pair):
    a, b = pair
    objectives = [Objective.stack([[(torch.randn(d), 1.0)]]) for d in (32, 40)]
    scorer = joint.JointScorer([pez_core.ClipScorer(m, o) for m, o in zip((a, b), objectives)], [0.3, 0.7])
    soft = torch.randn(2, 5, 16 + 24, generator=torch.Generator().manual_seed(0))
    run = engine.Run(scorer, PezConfig(steps=1))
    chosen = run.project(soft)
    allowed = scorer.allowed
    cos_a = F.normalize(soft[..., :16], dim=-1) @ F.normalize(a.token_embeddings[allowed], dim=-1).T
    cos_b = F.normalize(soft[..., 16:], dim=-1) @ F.normalize(b.token_embeddings[allowed], dim=-1).T
    expected = allowed[(0.3 * cos_a + 0.7 * cos_b).argmax(-1)]
    assert torch.equal(chosen, expected)
    # and it is neither model's own nearest token everywhere
    assert not torch.equal(chosen, allowed[cos_a.argmax(-1)]) or not torch.equal(chosen, allowed[cos_b.argmax(-1)])


def test_each_model_moves_its_own_soft_prompt(pair):
    """The gain of a model reaches only its slice of the side-by-side soft prompt."""
    a, b = pair
    objectives = [Objective.stack([[(torch.randn(d), 1.0)]]) for d in (32, 40)]
    scorer = joint.JointScorer([pez_core.ClipScorer(m, o) for m, o in zip((a, b), objectives)], [1.0, 0.0])
    ids = scorer.allowed[:6][None]
    prompt = scorer.table[ids].float().requires_grad_(True)
    with torch.enable_grad():
        gain, _ = scorer.gains(prompt, torch.zeros(1, dtype=torch.long))
        gain.sum().backward()
    assert prompt.grad[..., :16].abs().sum() > 0 and prompt.grad[..., 16:].abs().sum() == 0
    own, _ = scorer.scorers[0].gains(a.token_embeddings[ids].float(), torch.zeros(1, dtype=torch.long))
    assert float(gain.detach()) == pytest.approx(float(own.detach()), abs=1e-6)


def test_planted_prompt_is_recovered_jointly(pair):
    a, b = pair
    allowed = pez_core.allowed_token_ids(a.tokenizer, "words")
    g = torch.Generator().manual_seed(1)
    planted = allowed[torch.randint(len(allowed), (1, 6), generator=g)]
    randoms = allowed[torch.randint(len(allowed), (400, 6), generator=g)]
    objectives, random_best = [], []
    with torch.no_grad():
        for m in (a, b):
            target = m.encode_ids(planted)[0]
            objectives.append(Objective.stack([[(target, 1.0)]]))
            random_best.append(float((m.encode_ids(randoms) @ target).max()))
    [result] = joint.optimize(pez_core.combine([a, b]), objectives, PezConfig(prompt_len=6, steps=300, seed=0))
    # the planted prompt is the optimum of both towers; measured: joint 0.9943 / 0.9774, the best of 400
    # random prompts 0.9843 / 0.9607 (each tower alone reaches 0.9985 / 0.9955 in as many steps)
    for similarity, best in zip(result.similarities, random_best):
        assert 1 - similarity < (1 - best) / 1.5, (result.similarities, random_best)


def test_joint_prompt_serves_both_models(pair):
    a, b = pair
    config = PezConfig(prompt_len=6, steps=150, seed=0)
    own = [pez_core.distill(m, TEXT, config) for m in (a, b)]
    together = pez_core.distill([a, b], TEXT, config)
    for i, other in ((0, 1), (1, 0)):
        own_here = text_similarities([a, b][i:i + 1], own[i].prompt)[0]
        others_here = text_similarities([a, b][i:i + 1], own[other].prompt)[0]
        joint_here = together.similarities[i]
        # measured: joint 0.895 / 0.880, own 0.963 / 0.955, the other model's prompt 0.279 / 0.065
        assert joint_here > own_here - 0.15 and joint_here > others_here + 0.3, (joint_here, own_here, others_here)
    assert together.similarities == pytest.approx(text_similarities([a, b], together.prompt), abs=1e-5)
    assert together.similarity == pytest.approx(sum(together.similarities) / 2, abs=1e-5)


def test_weights_shift_the_balance(pair):
    a, b = pair
    config = PezConfig(prompt_len=6, steps=120, seed=0)
    towards_a = pez_core.distill(pez_core.combine([a, b], [0.9, 0.1]), TEXT, config)
    towards_b = pez_core.distill(pez_core.combine([a, b], [0.1, 0.9]), TEXT, config)
    assert towards_a.similarities[0] > towards_b.similarities[0]
    assert towards_b.similarities[1] > towards_a.similarities[1]
    assert towards_a.similarity == pytest.approx(0.9 * towards_a.similarities[0] + 0.1 * towards_a.similarities[1],
                                                 abs=1e-5)


def test_same_seed_same_joint_prompt(pair):
    config = PezConfig(prompt_len=5, steps=30, seed=4, restarts=2)
    first, second = (pez_core.distill(list(pair), TEXT, config) for _ in range(2))
    other = pez_core.distill(list(pair), TEXT, PezConfig(prompt_len=5, steps=30, seed=5, restarts=2))
    assert (first.prompt, first.similarities) == (second.prompt, second.similarities)
    assert other.prompt != first.prompt


def test_invert_and_style_with_two_image_towers(pair):
    a, b = pair
    rng = np.random.default_rng(0)
    images = [rng.random((32, 32, 3)), rng.random((40, 24, 3))]
    config = PezConfig(prompt_len=4, steps=20, restarts=2)
    results = pez_core.invert([a, b], images, config)
    assert len(results) == 2
    for result, image in zip(results, images):  # each prompt scored against its own image, by each model
        assert result.similarities == pytest.approx([float(s[0, 0]) for s in pez_core.score_each([a, b], result.prompt,
                                                                                                  [image])], abs=1e-5)
    shared = pez_core.style([a, b], images, config)
    each = [float(s.mean()) for s in pez_core.score_each([a, b], shared.prompt, images)]
    assert shared.similarities == pytest.approx(each, abs=1e-5)
    assert float(pez_core.score([a, b], shared.prompt, images).mean()) == pytest.approx(sum(each) / 2, abs=1e-5)


def test_small_batches_find_the_same_joint_prompts(pair, monkeypatch):
    a, b = pair
    rng = np.random.default_rng(1)
    images = [rng.random((32, 32, 3)) for _ in range(3)]
    config = PezConfig(prompt_len=4, steps=20, restarts=2, seed=2)
    whole = pez_core.invert([a, b], images, config)
    # room for 2 prompts through both towers at once
    per_prompt = sum(scorer_module.ACTIVATION_ELEMENTS * 6 * m.text_width * m.text_layers * 4 for m in (a, b))
    scorers = [pez_core.ClipScorer(m, Objective.stack([[(torch.randn(d), 1.0)]])) for m, d in ((a, 32), (b, 40))]
    with monkeypatch.context() as short:
        short.setattr(devices_module, "free_memory", lambda device: 2 * 2 * per_prompt + 1)
        assert joint.JointScorer(scorers, [0.5, 0.5]).prompts_that_fit(4) == 2
    monkeypatch.setattr(joint.JointScorer, "prompts_that_fit", lambda self, prompt_len: 2)
    split = pez_core.invert([a, b], images, config)
    assert [r.token_ids for r in split] == [r.token_ids for r in whole]
    assert np.allclose([r.similarities for r in split], [r.similarities for r in whole], atol=1e-5)


def test_combine_flattens_merges_and_normalises(pair):
    a, b = pair
    ab = pez_core.combine([a, b], [1, 3])
    assert ab.models == (a, b) and ab.weights == pytest.approx((0.25, 0.75))
    nested = pez_core.combine([ab, a], [2, 1])  # a: 2*0.25 + 1, b: 2*0.75
    assert nested.models == (a, b) and nested.weights == pytest.approx((0.5, 0.5))
    assert pez_core.combine([a, b], [1, 0]).models == (a,)
    assert "tiny-a" in repr(ab) and ab.name == "tiny-a + tiny-b"


@pytest.mark.parametrize("models, weights, message", [
    ([], None, "no models"),
    (["a"], [1, 1], "2 weights for 1 models"),
    (["a", "b"], [1, -1], "weight 2 must be"),
    (["a", "b"], [1, float("nan")], "weight 2 must be"),
    (["a", "b"], [0, 0], "every model has weight 0"),
    (["a", "x"], None, "model 2 is a str"),
])
def test_combine_errors_name_the_input(pair, models, weights, message):
    by_name = {"a": pair[0], "b": pair[1]}
    with pytest.raises(PezError, match=message):
        pez_core.combine([by_name.get(m, m) for m in models], weights)


def test_joint_result_dict_lists_each_similarity(pair):
    result = pez_core.distill(list(pair), TEXT, PezConfig(prompt_len=3, steps=6))
    row = result.to_dict()
    assert len(row["similarities"]) == 2 and row["similarity"] == result.similarity


def test_sdxl_preset_offline_names_the_missing_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "SDXL (ViT-L-14 · openai + ViT-bigG-14 · laion2b_s39b_b160k)"
    assert name in pez_core.JOINT_PRESETS and name in dict(pez_core.available_models())
    assert all(part in pez_core.PRESETS for part in pez_core.JOINT_PRESETS[name].parts)
    with pytest.raises(pez_core.WeightsNotAvailableError, match="ViT-L-14 / openai"):
        pez_core.load_model(name, device="cpu")


def test_cli_repeated_models_pair_up_and_report_each_similarity(tmp_path):
    import os
    import subprocess
    import sys

    a, b = write_variant(tmp_path, "cli-a", 16, 32, 0), write_variant(tmp_path, "cli-b", 24, 40, 1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}

    def pez(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pez_core", *args], capture_output=True, text=True, env=env,
                              cwd=REPO_ROOT, timeout=300)
    common = ["distill", TEXT, "--steps", "6", "--prompt-len", "3", "--json", "--device", "cpu"]
    done = pez(*common, "--model", a, "--model", b, "--model-weight", "1", "--model-weight", "3")
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert len(row["similarities"]) == 2
    assert row["similarity"] == pytest.approx(0.25 * row["similarities"][0] + 0.75 * row["similarities"][1], abs=1e-5)
    alone = json.loads(pez(*common, "--model", a).stdout)
    assert alone["similarities"] == [alone["similarity"]]
    wrong = pez(*common, "--model", a, "--model", b, "--model-weight", "1")
    assert wrong.returncode == 2 and "1 --model-weight for 2 --model" in wrong.stderr
