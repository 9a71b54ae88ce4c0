"""LM prompts on a classification task (pez_core.lm.task) with random-weight tiny GPT-2s: the gradient path
against the decoded string, batched scoring, fluency, the allowed tokens, seeds, templates and verbalizers."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

pytest.importorskip("transformers")

from pez_core import PezConfig, PezError, search  # noqa: E402
from pez_core import lm as L  # noqa: E402
from pez_core.lm.data import Example, parse_verbalizer  # noqa: E402
from tiny_lm import TEMPLATE, VERBALIZER, examples  # noqa: E402


def _scorer(lm, fluency=0.0, **kw) -> L.LmScorer:
    train = examples()
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
    score = L.evaluate_prompt(tiny, TEMPLATE, VERBALIZER, examples(), text)
    assert float(-label_gain) == pytest.approx(score.loss, rel=1e-4)
    assert float(accuracy) == pytest.approx(score.accuracy)
    assert float(label_gain - gain) == pytest.approx(score.nll, rel=1e-4)  # fluency 1 subtracts the prompt NLL


def test_prompt_nll_is_the_models_own_next_token_loss(tiny):
    """Independent reference: the full model's logits over the filled template's token ids."""
    scorer = _scorer(tiny)
    ids = _words_prompt(scorer, 3)
    text = scorer.decode(ids)
    nll = []
    for example in examples():
        head, _, _ = scorer.template.parts(example.text)
        seq = [tiny.start_id] + tiny.encode(head) + ids
        logp = tiny.model(input_ids=torch.tensor([seq])).logits[0].log_softmax(-1)
        nll += [-float(logp[len(seq) - 4 + j, ids[j]]) for j in range(3)]
    score = L.evaluate_prompt(tiny, TEMPLATE, VERBALIZER, examples(), text)
    assert score.nll == pytest.approx(sum(nll) / len(nll), rel=1e-4)
    assert score.perplexity == pytest.approx(math.exp(score.nll))
    assert L.evaluate_prompt(tiny, TEMPLATE, VERBALIZER, examples(), "").perplexity is None


def test_prompts_scored_together_score_as_each_alone(tiny, monkeypatch):
    """Polishing scores many candidates at once: batches that mix several prompts' templates (and the
    template alone) must give each prompt exactly its own accuracy, loss and perplexity."""
    scorer = _scorer(tiny)
    prompts = [scorer.decode(_words_prompt(scorer, n)) for n in (3, 1, 5)] + ["", "great"]
    alone = [L.evaluate_prompt(tiny, TEMPLATE, VERBALIZER, examples(), p) for p in prompts]
    monkeypatch.setattr(L.task, "EVAL_BATCH", 7)  # batches that cut across prompts
    together = L.evaluate_prompts(tiny, TEMPLATE, VERBALIZER, examples(), prompts)
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
    straight_through = soft + (hard - soft).detach()  # as the PEZ loop feeds a scorer: hard forward, soft backward
    gain_st, _ = scorer.gains(straight_through, problems)
    scorer.layout(hard.shape[1]).calls.zero_()  # the same batch again
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
    nll = L.evaluate_prompt(tiny, TEMPLATE, VERBALIZER, examples(), text).nll
    assert gains[0] - gains[1] == pytest.approx(2.0 * nll, rel=1e-4)
    assert not torch.allclose(grads[0], grads[1])


@pytest.mark.parametrize("vocab,blocklist,allowlist", [("words", "good,the", None), ("full", None, "cat,dog,red")])
def test_projection_and_result_use_only_allowed_tokens(tiny, vocab, blocklist, allowlist, monkeypatch):
    scorer = _scorer(tiny, vocab=vocab, blocklist=blocklist, allowlist=allowlist)
    allowed = set(scorer.allowed.tolist())
    texts = L.token_texts(tiny.tokenizer)
    if allowlist:
        assert {texts[i].strip() for i in allowed} <= {"cat", "dog", "red"}
    else:
        assert all(texts[i][0] == " " and texts[i][1:].isalpha() for i in allowed)
        assert not {texts[i].strip() for i in allowed} & {"good", "the"}
    config = PezConfig(prompt_len=4, steps=4, restarts=2, seed=3, vocab=vocab, blocklist=blocklist, allowlist=allowlist)
    # the projection, seen through the public search: every hard prompt the loop scores is made of allowed rows
    scored = []
    gains = scorer.gains

    def recording(prompts, problems):
        scored.append(prompts.detach().flatten(0, 1))
        return gains(prompts, problems)
    monkeypatch.setattr(scorer, "gains", recording)
    search(scorer, dataclasses.replace(config, polish="off"))  # polishing scores the strings' own tokens
    monkeypatch.undo()
    distances, ids = torch.cdist(torch.cat(scored), scorer.table.detach().float()).min(-1)
    assert float(distances.max()) < 1e-3 and set(ids.tolist()) <= allowed  # rounding only: rows lie >= 0.07 apart
    [result] = search(scorer, config)
    assert set(result.token_ids) <= allowed or allowlist  # an allowlist's pieces may merge when re-tokenized
    assert result.token_ids == scorer.tokenize(result.prompt)


def test_result_reports_the_accuracy_of_its_string(tiny):
    train = examples(8)
    result = L.learn_prompt(tiny, TEMPLATE, VERBALIZER, train[:6], train, PezConfig(prompt_len=3, steps=6, restarts=2))
    score = L.evaluate_prompt(tiny, TEMPLATE, VERBALIZER, train, result.prompt)
    assert result.similarity == pytest.approx(score.accuracy)


def test_same_seed_same_prompt_and_batches_follow_the_seed(tiny):
    config = PezConfig(prompt_len=3, steps=8, restarts=2, seed=5)
    train = examples(8)
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
        L.LmScorer(tiny, TEMPLATE, VERBALIZER, examples(), fluency=-1)


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
