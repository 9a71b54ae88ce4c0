"""What the language-model tests share: a random-weight tiny GPT-2 written on the spot, a two-label task for
it, and whether the bundled demo LM is there."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pez_core.lm import DEMO_LM, bundled_lm
from pez_core.lm.data import Example

WORDS = ("good bad great terrible film movie was it the a and very not so honest verdict red blue cat dog "
         "runs sits quick slow happy sad").split()
VERBALIZER = "positive:great,negative:terrible"
TEMPLATE = "{input} {prompt} it was"
DEMO = bundled_lm(DEMO_LM)
needs_demo = pytest.mark.skipif(not (DEMO / "model.safetensors").is_file(), reason="bundled tiny LM not built")


def write_random_lm(folder: Path, seed: int, width: int = 32) -> Path:
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


def examples(n: int = 6) -> list[Example]:
    """``n`` short texts labelled positive and negative in turn."""
    texts = ["the film was good", "a very bad movie", "it was so happy", "the cat was sad", "quick and good",
             "slow and bad", "red dog runs", "blue cat sits"]
    return [Example(texts[i % len(texts)], ("positive", "negative")[i % 2]) for i in range(n)]
