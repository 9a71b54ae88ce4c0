"""Train the bundled caption language model ("shapes-caption-lm"), the fluency prior of the shapes-demo CLIP.

Deterministic (fixed seeds, one thread, deterministic torch algorithms), CPU-only, about a minute:

    HF_HUB_OFFLINE=1 .venv/bin/python -m training.train_caption_lm --out-dir pez_core/demo/bundled

The corpus is captions of random scenes of the shapes world (``pez_core.demo.shapes``), every template in turn
(the pair template gets two-object scenes); a quarter of them cut to an ending ("red star on a black background"),
because a prompt is often a caption's fragment and should read as one. The tokenizer is a byte-level BPE, so any
string can be scored: a word outside the world is spelled in byte pieces and gets a low probability. It adds a
prefix space, so "red square" and " red square" are the same tokens and the first word is the word token every
later word is. Each caption is read after the BOS token ``<|endoftext|>`` and ends with it, so the first word is
scored given BOS.

Writes <out-dir>/shapes-caption-lm/ in Hugging Face format (config.json, generation_config.json,
model.safetensors, tokenizer.json, tokenizer_config.json). At the end it prints the mean per-token negative log-
likelihood (and perplexity) of held-out captions, of shuffles of them and of word salad made of world words.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from pez_core.demo import shapes
from pez_core.lm.model import load_lm
from pez_core.lm.prior import LmPrior
from training.train_tiny_lm import fit, new_gpt2, train_tokenizer

NAME = "shapes-caption-lm"
CORPUS_SEED, HELD_OUT_SEED, SALAD_SEED = 0, 1, 2
VOCAB_SIZE = 512  # asked for; the BPE stops merging once every caption word is one token
WIDTH, LAYERS, HEADS, POSITIONS = 64, 3, 4, 64
HELD_OUT = 200
ENDING_SHARE = 0.25  # captions cut to an ending; with whole captions only, "red square" read worse than salad
FRAGMENTS = ("red square", "red star on black", "large green square white background")
EXAMPLE_SALADS = ("gray of of cross object square green object", "left cross of pink square object object",
                  "background background background red center object star object")


def scenes_and_captions(seed: int, count: int) -> list[tuple[shapes.Scene, str]]:
    """``count`` random scenes, each with its caption in the next template in turn."""
    rng = np.random.default_rng(seed)
    rows = []
    for template in itertools.islice(itertools.cycle(shapes.TEMPLATES), count):
        scene = shapes.random_scene(rng, 2 if template in shapes.PAIR_TEMPLATES else 1)
        rows.append((scene, shapes.caption(scene, template)))
    return rows


def with_endings(texts: list[str], seed: int) -> list[str]:
    """``texts`` with ``ENDING_SHARE`` of them cut to an ending: some leading words dropped, two words at least kept."""
    rng = np.random.default_rng(seed)
    out = []
    for text in texts:
        words = text.split()
        if rng.random() < ENDING_SHARE and len(words) > 2:
            words = words[int(rng.integers(1, len(words) - 1)):]
        out.append(" ".join(words))
    return out


def coverage(scenes: list[shapes.Scene]) -> tuple[int, int]:
    """(seen, possible) (shape, colour, size, position, background) combinations of the first objects; an object
    never has its background's colour."""
    possible = {(shape, color, size, position, bg) for shape, color, size, position, bg in itertools.product(
        shapes.SHAPES, shapes.COLORS, shapes.SIZES, shapes.POSITIONS, shapes.BACKGROUNDS) if color != bg}
    seen = {(o.shape, o.color, o.size, o.position, s.background) for s in scenes for o in s.objects[:1]}
    return len(seen & possible), len(possible)


def shuffled(rng: np.random.Generator, text: str) -> str:
    """The words of ``text`` in another order (the same text only when no other order exists)."""
    words = text.split()
    if len(set(words)) < 2:
        return text
    while True:
        candidate = " ".join(rng.permutation(words))
        if candidate != text:
            return candidate


def word_salad(rng: np.random.Generator, words: list[str], count: int) -> list[str]:
    """``count`` strings of 4-9 world words drawn with repeats, in no order."""
    return [" ".join(rng.choice(words, size=int(rng.integers(4, 10)))) for _ in range(count)]


def report(folder: Path, words: list[str]) -> dict:
    """Mean per-token NLL and perplexity of held-out captions, shuffles of them and word salad, read as the fluency
    prior reads prompts (printed)."""
    prior = LmPrior(load_lm(folder, device="cpu"))

    def nll(texts):
        return [-lp for lp in prior.log_probs(texts)]

    held_out = [text for _, text in scenes_and_captions(HELD_OUT_SEED, HELD_OUT)]
    rng = np.random.default_rng(SALAD_SEED)
    groups = {"held-out captions": held_out,
              "shuffled captions": [shuffled(rng, text) for text in held_out],
              "word salad": word_salad(rng, words, HELD_OUT)}
    means = {name: float(np.mean(nll(texts))) for name, texts in groups.items()}
    for name, value in means.items():
        print(f"{name:>18} ({len(groups[name])}): mean NLL {value:.3f} nats/token, perplexity {math.exp(value):.2f}")
    for text, value in zip(EXAMPLE_SALADS, nll(list(EXAMPLE_SALADS))):
        print(f"{'':>18} {text!r}: NLL {value:.3f}, perplexity {math.exp(value):.2f}")
    ratio = math.exp(means["word salad"] - means["held-out captions"])
    print(f"perplexity ratio: word salad / captions {ratio:.1f}x, "
          f"shuffled / captions {math.exp(means['shuffled captions'] - means['held-out captions']):.1f}x")
    for text, value in zip(FRAGMENTS, nll(list(FRAGMENTS))):
        print(f"{'fragment':>18} {text!r}: NLL {value:.3f}, perplexity {math.exp(value):.2f}")
    prefixes = ("", "a red", "a photo of a", "a blue circle on the")
    for text, words in zip(prefixes, prior.next_words(prefixes, 5)):
        print(f"next after {text!r}: {words}")
    return {f"nll {name}": round(value, 4) for name, value in means.items()}


def train(out_dir: Path, steps: int, captions: int, batch_size: int) -> dict:
    started = time.perf_counter()
    rows = scenes_and_captions(CORPUS_SEED, captions)
    corpus = with_endings([text for _, text in rows], CORPUS_SEED)
    seen, possible = coverage([scene for scene, _ in rows])
    print(f"{len(corpus)} captions, {len(set(corpus))} distinct; scene combinations covered: {seen} of {possible}")
    tokenizer = train_tokenizer(corpus, VOCAB_SIZE, add_prefix_space=True)
    bos = tokenizer.bos_token_id
    ids = [[bos] + tokenizer(text, add_special_tokens=False)["input_ids"] + [bos] for text in corpus]
    print(f"vocabulary {len(tokenizer)}; longest caption {max(map(len, ids))} tokens with BOS and end")
    model = new_gpt2(tokenizer, WIDTH, LAYERS, HEADS, CORPUS_SEED, positions=POSITIONS)
    final_loss = fit(model, ids, bos, steps, batch_size, CORPUS_SEED, NAME)
    folder = out_dir / NAME
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    seconds = time.perf_counter() - started
    words = sorted({word for text in corpus for word in text.split()})
    scores = report(folder, words)
    return {"name": NAME, "seconds": round(seconds, 1), "final_loss": round(final_loss, 4),
            "parameters": sum(p.numel() for p in model.parameters()),
            "bytes": sum(p.stat().st_size for p in folder.iterdir()), **scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("pez_core/demo/bundled"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--captions", type=int, default=24000)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread for the BPE trainer too
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    print(json.dumps(train(args.out_dir, args.steps, args.captions, args.batch_size)), flush=True)


if __name__ == "__main__":
    main()
