"""Train the bundled tiny GPT-2 language models ("tiny-lm", and "tiny-lm-b" for transfer) on a synthetic corpus.

Deterministic (fixed seeds, one thread), CPU-only, a few minutes:

    HF_HUB_OFFLINE=1 .venv/bin/python -m training.train_tiny_lm --out-dir pez_core/demo/bundled

The corpus is built so that a prompt matters. Every document is a short review, then perhaps small talk,
then "it was <verdict> .". The verdict ("great" / "terrible") follows the review's sentiment only when a
*cue phrase* ("to be honest ,", "all in all ,", "my verdict :", ...) comes between the review and
"it was"; without one it is a coin flip. So the demo template "{input} {prompt} it was" alone is
weak (0.66 on the validation reviews: a model this small leaks some sentiment into cue-less contexts),
and a prompt holding a cue word lifts it to 1.0. Small talk is fluent text without cues: a prompt
made of it reads well but does not help, which gives the fluency term something to trade.

Writes <out-dir>/<name>/ in Hugging Face format (config.json, model.safetensors, tokenizer files, trained
here with the ``tokenizers`` library) plus the task data (sentiment-train.jsonl, sentiment-valid.jsonl).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

SUBJECTS = "film movie show book play story song album novel series".split()
POSITIVE = "fun bright warm clever lovely charming sharp joyful witty gentle superb vivid".split()
NEGATIVE = "dull slow cold clumsy boring flat messy bland grim tedious awful weak".split()
REVIEWS = ("the {s} was {a} and {b} .", "a {a} {s} , {b} too .", "this {s} felt {a} , even {b} .",
           "i found the {s} {a} .", "what a {a} {s} .", "the {s} is {a} , so {b} .", "such a {a} and {b} {s} .")
CUES = ("to be honest ,", "in short ,", "all in all ,", "my verdict :", "in the end ,", "overall ,",
        "honestly ,", "to sum up ,")
SMALL_TALK = ("we went there on a sunday .", "my friend came along .", "the seats were red .", "it rained that night .",
              "i had some popcorn .", "the ticket was cheap .", "we talked about it later .",
              "my sister liked the music .",
              "it was late .", "the room was quiet .", "we sat near the front .", "it was a long day .",
              "the bus was crowded .", "i read it on the train .", "we had tea after .", "my dad fell asleep .")
VERDICTS = ("great", "terrible")
LABELS = ("positive", "negative")
BOS = "<|endoftext|>"
MODELS = {  # name: (corpus seed, vocabulary size, width, layers, heads)
    "tiny-lm": (0, 1024, 64, 3, 4),
    "tiny-lm-b": (1, 400, 64, 2, 4),  # a smaller vocabulary: some words split into pieces
}


def review(rng: random.Random, positive: bool) -> str:
    words = POSITIVE if positive else NEGATIVE
    a, b = rng.sample(words, 2)
    return rng.choice(REVIEWS).format(s=rng.choice(SUBJECTS), a=a, b=b)


def talk(rng: random.Random, most: int) -> list[str]:
    return [rng.choice(SMALL_TALK) for _ in range(rng.randint(0, most))]


def document(rng: random.Random) -> str:
    """One line of the corpus (see the module docstring for its shape)."""
    kind = rng.random()
    if kind < 0.15:
        return " ".join(talk(rng, 4) or [rng.choice(SMALL_TALK)])
    positive = rng.random() < 0.5
    parts = [review(rng, positive)] + talk(rng, 2)
    if kind < 0.6:  # a cue: the verdict follows the review, wherever the cue sits before "it was"
        parts.insert(rng.randint(1, len(parts)), rng.choice(CUES))
        parts += talk(rng, 1)
        verdict = VERDICTS[0 if positive else 1]
    else:
        verdict = rng.choice(VERDICTS)
    parts.append(f"it was {verdict} .")
    return " ".join(noisy(rng, " ".join(parts).split()))


def noisy(rng: random.Random, words: list[str]) -> list[str]:
    """A third of the documents get 1-3 stray words, so the model reads past junk between cue and answer."""
    if rng.random() < 1 / 3:
        pool = SUBJECTS + POSITIVE + NEGATIVE + [w for t in SMALL_TALK for w in t.split()]
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randint(1, len(words) - 3), rng.choice(pool))
    return words


def task_data(seed: int, per_label: int) -> list[dict]:
    rng = random.Random(seed)
    rows = [{"text": review(rng, label == LABELS[0]), "label": label} for label in LABELS for _ in range(per_label)]
    rng.shuffle(rows)
    return rows


def train_tokenizer(corpus: list[str], vocab_size: int, add_prefix_space: bool = False):
    """A byte-level BPE (any string encodes) with ``BOS`` as its only special token. ``add_prefix_space``: the
    first word is encoded as if a space came before it, as every other word is."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    tok = ByteLevelBPETokenizer(add_prefix_space=add_prefix_space)
    tok.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=1, special_tokens=[BOS], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, bos_token=BOS, eos_token=BOS, unk_token=BOS)


def batches(ids: list[list[int]], batch_size: int, pad: int, step: int, seed: int):
    """The batch for ``step``: a seeded sample of documents, right-padded; labels -100 on padding."""
    rng = random.Random(seed * 1_000_003 + step)
    docs = [ids[rng.randrange(len(ids))] for _ in range(batch_size)]
    width = max(map(len, docs))
    inputs = torch.full((batch_size, width), pad)
    labels = torch.full((batch_size, width), -100)
    for i, doc in enumerate(docs):
        inputs[i, :len(doc)] = torch.tensor(doc)
        labels[i, :len(doc)] = torch.tensor(doc)
    return inputs, labels


def new_gpt2(tokenizer, width: int, layers: int, heads: int, seed: int, positions: int = 96):
    """A freshly initialised (from ``seed``) GPT-2 without dropout whose BOS and EOS are the tokenizer's BOS."""
    from transformers import GPT2Config, GPT2LMHeadModel

    bos = tokenizer.bos_token_id
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=positions, n_embd=width, n_layer=layers, n_head=heads,
                        bos_token_id=bos, eos_token_id=bos, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def fit(model, ids: list[list[int]], pad: int, steps: int, batch_size: int, seed: int, name: str,
        peak_lr: float = 3e-3, warmup: int = 100) -> float:
    """Train ``model`` on the documents ``ids`` (AdamW, linear warm-up then cosine to 0, the seeded ``batches``);
    the last batch's loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, betas=(0.9, 0.98), weight_decay=0.01)
    started = time.perf_counter()
    for step in range(steps):
        lr = peak_lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, labels = batches(ids, batch_size, pad, step, seed)
        loss = model(input_ids=inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"{name} step {step} loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    return loss.item()


def train(name: str, out_dir: Path, steps: int, documents: int, batch_size: int) -> dict:
    seed, vocab_size, width, layers, heads = MODELS[name]
    rng = random.Random(seed)
    corpus = [document(rng) for _ in range(documents)]
    tokenizer = train_tokenizer(corpus, vocab_size)
    bos = tokenizer.bos_token_id
    ids = [[bos] + tokenizer(doc)["input_ids"] + [bos] for doc in corpus]
    model = new_gpt2(tokenizer, width, layers, heads, seed)
    started = time.perf_counter()
    final_loss = fit(model, ids, bos, steps, batch_size, seed, name)
    folder = out_dir / name
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for split, seed_, n in (("train", 100 + seed, 32), ("valid", 200 + seed, 100)):
        rows = task_data(seed_, n)
        (folder / f"sentiment-{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"name": name, "seconds": round(time.perf_counter() - started, 1), "final_loss": round(final_loss, 4),
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("pez_core/demo/bundled"))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--documents", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.models:
        print(json.dumps(train(name, args.out_dir, args.steps, args.documents, args.batch_size)), flush=True)


if __name__ == "__main__":
    main()
