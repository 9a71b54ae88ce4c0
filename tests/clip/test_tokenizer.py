"""The CLIP tokenizer (pez_core.clip.tokenizer): open_clip's ids, vocabulary modes, bounded texts, a bounded
word cache, and cancel while tokenizing."""
from __future__ import annotations

import random
import string

import pytest

import pez_core
from pez_core import PezError
from pez_core.clip import tokenizer as vocab
from pez_core.clip.tokenizer import token_text
from pez_core.common import limits


def test_vocab_modes(model):
    tok = model.tokenizer
    specials = {tok.sot_token_id, tok.eot_token_id, 0}
    full = set(pez_core.allowed_token_ids(tok, "full").tolist())
    ascii_ = set(pez_core.allowed_token_ids(tok, "ascii").tolist())
    words = set(pez_core.allowed_token_ids(tok, "words").tolist())
    assert not specials & full and len(full) == 49408 - 3
    assert words < ascii_ < full
    assert all(token_text(tok, i).endswith("</w>") and token_text(tok, i)[:-4].isalpha() for i in words)
    assert all(token_text(tok, i).removesuffix("</w>").isascii() for i in ascii_)
    assert model.tokenize("photo")[0] in words and model.tokenize("🙂")[0] not in ascii_


def test_tokenizer_gives_open_clips_ids():
    from open_clip.tokenizer import SimpleTokenizer

    reference, ours = SimpleTokenizer(), vocab.ClipTokenizer()
    rng = random.Random(3)
    alphabet = string.ascii_letters + "éüßøçñ日本語中文한국어😀🎨 ,.!?'-0123456789<>"
    texts = ["a photo of a cat", "<start_of_text> twice <end_of_text>", "aaaaaaaaaaaaaaaa", "ababababab"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(1500)]
    texts += ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(100, 1500))) for _ in range(5)]
    for text in texts:
        assert ours.encode(text) == reference.encode(text), text


def test_a_30000_letter_word_is_tokenized_and_round_trips():
    word = "".join(random.Random(0).choice(string.ascii_lowercase) for _ in range(30_000))
    tokenizer = pez_core.clip_tokenizer()
    ids = tokenizer.encode(word)
    assert 3_000 < len(ids) < 30_000
    assert tokenizer.decode(ids).strip() == word


def test_texts_above_the_limit_are_refused_naming_the_input():
    model = pez_core.load_model("shapes-demo", device="cpu")
    huge = "a " * (limits.MAX_TEXT_CHARS // 2 + 1)
    with pytest.raises(PezError, match=r"negative text has 50,002 characters, over the limit of 50,000"):
        model.encode_texts([huge], "negative text")
    with pytest.raises(PezError, match="the blocklist has"):
        pez_core.allowed_token_ids(model.tokenizer, "words", blocklist=huge)
    with pytest.raises(PezError, match="the allowlist has"):
        pez_core.allowed_token_ids(model.tokenizer, "words", allowlist=["cat"] * (limits.MAX_TEXT_CHARS // 3))
    assert model.encode_texts(["a red circle"]).shape[0] == 1  # still fine after refusals


def test_word_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(vocab, "WORD_CACHE_SIZE", 50)
    tokenizer = vocab.ClipTokenizer()
    rng = random.Random(5)
    tokenizer.encode(" ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(6)) for _ in range(500)))
    tokenizer.encode("z" * 5000)  # longer than CACHED_WORD_CHARS: never kept
    assert len(tokenizer.cache) == 50 and "z" * 5000 not in tokenizer.cache


def test_tokenizing_a_long_text_sees_cancel():
    class Cancelled(Exception):
        pass

    def cancel():
        raise Cancelled

    limits.set_interrupt_check(cancel)
    with pytest.raises(Cancelled):
        vocab.ClipTokenizer().encode("word " * (vocab.INTERRUPT_EVERY + 1))
    assert vocab.ClipTokenizer().encode("a few words")  # short texts finish before the first check
