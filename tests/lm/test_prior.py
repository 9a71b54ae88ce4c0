"""A causal language model as the fluency prior (pez_core.lm.prior): it reads text better than its shuffle,
scores a text the same alone and in a batch, and proposes whole words."""
from __future__ import annotations

import pytest

import pez_core


@pytest.fixture(scope="module")
def tiny_prior():
    from pez_core.lm.prior import LmPrior

    return LmPrior(pez_core.lm.load_lm("tiny-lm", device="cpu"))


def test_a_language_model_prior_reads_its_own_language_better_than_a_shuffle(tiny_prior):
    sentence, shuffled = tiny_prior.log_probs(["the film was lovely and witty .", "witty the . lovely was and film"])
    assert sentence > shuffled + 1.0, (sentence, shuffled)


def test_a_text_scores_the_same_alone_and_in_a_batch_of_other_lengths(tiny_prior):
    texts = ["the film", "we sat near the front . it was late .", "what a dull show"]
    together = tiny_prior.log_probs(texts)
    tiny_prior.cache.clear()
    alone = [tiny_prior.log_probs([t])[0] for t in texts]
    assert together == pytest.approx(alone, abs=1e-5)


def test_next_words_are_whole_words_the_model_expects(tiny_prior):
    after_verdict, first = tiny_prior.next_words(["the film was lovely and witty . all in all , it was", ""], 6)
    assert len(after_verdict) == 6 and all(w.isalpha() for w in after_verdict + first)
    assert {"great", "terrible"} & set(after_verdict), after_verdict


def test_a_fluency_model_that_cannot_load_names_its_size_and_the_fixes(monkeypatch):
    from pez_core.lm import prior

    monkeypatch.setitem(prior.FLUENCY_PRESETS, "absent-lm", ("no-such-owner/no-such-model", "a 1 GB download"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(pez_core.WeightsNotAvailableError, match=r"'absent-lm' \(a 1 GB download\).*offline.*"
                                                                r"readability off"):
        prior.load_prior("absent-lm", "cpu")


def test_a_prompt_longer_than_the_model_reads_is_scored_on_its_start(tiny_prior):
    """A distilled prompt may spell to more LM tokens than the prior reads (unknown words go byte by byte)."""
    limit = tiny_prior.lm.positions
    long_text = " ".join(["the film was lovely"] * limit)
    [score] = tiny_prior.log_probs([long_text])
    [first_part] = tiny_prior.log_probs([tiny_prior.lm.tokenizer.decode(tiny_prior.lm.encode(long_text)[:limit - 1])])
    assert score == pytest.approx(first_part, abs=0.5) and score > -20
    [words] = tiny_prior.next_words([long_text], 3)
    assert len(words) == 3


def test_scores_outlive_a_full_cache(tiny_prior, monkeypatch):
    from pez_core.lm import prior

    monkeypatch.setattr(prior, "CACHE_SIZE", 3)
    tiny_prior.cache.clear()
    first = tiny_prior.log_probs(["the film", "a show"])
    both = tiny_prior.log_probs(["the film", "a show", "what a dull show", "it was late .", "we had tea after ."])
    assert both[:2] == first and len(tiny_prior.cache) <= 3
