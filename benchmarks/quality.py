"""Quality: does PEZ find the *meaningful* words? Measured on the shapes world, where the truth is known.

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python benchmarks/quality.py --model shapes-demo

Held-out images from ``pez_core.demo.shapes`` (seeds that neither training nor its evaluation use) are
inverted with PEZ in every setting (prompt length x vocabulary x restarts; all images of a setting
in one ``invert`` call), next to baselines run in the same process on the same images:

* the naive reference loop (``benchmarks/reference_loop.py``: full vocabulary, 1 restart, same steps);
* random search with the budget of the 8-restart runs (steps x 8 random prompts per image, drawn
  from the same vocabulary, the best kept);
* a CLIP-Interrogator-style ranking of every filling of the world's single-object templates that
  name a colour and a shape ("a {size} {color} {shape}", "a {color} {shape} on a {bg} background",
  ...; pair templates too for two-object images): what a method that already knows the right
  phrases reaches;
* the true caption's similarity (best template; for pairs the pair template, best order).

Word matching is ``pez_core.demo.grading``'s (documented in benchmarks/README.md): exact whole words,
no plurals or sub-word pieces, no other shape anywhere. Junk tokens: the prompt's tokens (as it
re-tokenizes) that are not tokens of the world's words.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import pez_core  # noqa: E402
from pez_core import PezConfig, allowed_token_ids  # noqa: E402
from pez_core.demo import shapes  # noqa: E402
from pez_core.demo.grading import WORLD_WORDS, match_pair, match_single  # noqa: E402

try:
    from benchmarks.reference_loop import reference_pez
except ImportError:  # run as a script from benchmarks/
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reference_loop import reference_pez

SINGLE_SEED, PAIR_SEED = 31_337, 31_338  # training draws from seeds [0, step]; its evaluation from 12345


def world_token_ids(model) -> set[int]:
    ids: set[int] = set()
    for w in WORLD_WORDS:
        ids.update(model.tokenize(w))
    return ids


# --- methods -------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    prompts: list[str]
    similarities: list[float]
    seconds: float                      # wall time of the whole method over the images it ran on
    indices: list[int] | None = None    # the images it ran on (None: all)


def string_similarity(model, prompts: list[str], targets: torch.Tensor) -> list[float]:
    """Cosine of each prompt *string* (re-tokenized, as any CLIP text encoder sees it) to its target."""
    sims = []
    for prompt, target in zip(prompts, targets):
        sims.append(float(model.encode_texts([prompt])[0] @ target) if model.tokenize(prompt) else float("nan"))
    return sims


def run_pez(model, images, L: int, vocab: str, restarts: int, steps: int, seed: int, polish: str = "off") -> Outcome:
    allowlist = list(WORLD_WORDS) if vocab == "bank" else None
    config = PezConfig(prompt_len=L, steps=steps, restarts=restarts, vocab="words" if vocab == "bank" else vocab,
                       allowlist=allowlist, seed=seed, polish=polish)
    results = pez_core.invert(model, images, config)
    return Outcome([r.prompt for r in results], [r.similarity for r in results], results[0].seconds)


def run_reference(model, targets: torch.Tensor, L: int, steps: int, seed: int) -> Outcome:
    started = time.perf_counter()
    prompts = [reference_pez(model, t, L, steps=steps, seed=seed + i)["prompt"] for i, t in enumerate(targets)]
    seconds = time.perf_counter() - started
    return Outcome(prompts, string_similarity(model, prompts, targets), seconds)


@torch.no_grad()
def run_random(model, targets: torch.Tensor, L: int, vocab: str, budget: int, seed: int, chunk: int = 4096) -> Outcome:
    """``budget`` uniform random prompts from the vocabulary, each scored against every image; per image the
    best is kept (its string re-scored). Every image sees ``budget`` independent random prompts; they are the
    same prompts for all images, which changes no image's odds but makes the run cheap."""
    allowlist = list(WORLD_WORDS) if vocab == "bank" else None
    allowed = allowed_token_ids(model.tokenizer, "words" if vocab == "bank" else vocab, None, allowlist)
    generator = torch.Generator().manual_seed(seed)
    targets = targets.to(model.device)
    started = time.perf_counter()
    best = torch.full((len(targets),), -2.0)
    best_ids = torch.zeros(len(targets), L, dtype=torch.long)
    for start in range(0, budget, chunk):
        ids = allowed[torch.randint(len(allowed), (min(chunk, budget - start), L), generator=generator)]
        value, index = (model.encode_ids(ids) @ targets.T).max(dim=0)
        better = value.cpu() > best
        best = torch.where(better, value.cpu(), best)
        best_ids[better] = ids[index.cpu()[better]]
    prompts = [model.decode(ids) for ids in best_ids.tolist()]
    seconds = time.perf_counter() - started
    return Outcome(prompts, string_similarity(model, prompts, targets), seconds)


def single_phrases() -> list[str]:
    """Every filling of the single-object templates that name a colour and a shape (720 phrases)."""
    out = []
    for t in (t for t in shapes.SINGLE_TEMPLATES if "{color}" in t and "{shape}" in t):
        fields = re.findall(r"{(\w+)}", t)
        pools = {"size": shapes.SIZES, "color": shapes.COLORS, "shape": shapes.SHAPES, "bg": shapes.BACKGROUNDS,
                 "position": shapes.POSITIONS}
        combos = [{}]
        for f in fields:
            combos = [{**c, f: v} for c in combos for v in pools[f]]
        out += [t.format(**c) for c in combos]
    return sorted(set(out))


def pair_phrases() -> list[str]:
    objs = [(c, s) for c in shapes.COLORS for s in shapes.SHAPES]
    return [t.format(color=c1, shape=s1, color2=c2, shape2=s2)
            for t in shapes.PAIR_TEMPLATES for c1, s1 in objs for c2, s2 in objs if (c1, s1) != (c2, s2)]


@torch.no_grad()
def run_interrogator(model, targets: torch.Tensor, phrases: list[str]) -> Outcome:
    started = time.perf_counter()
    feats = torch.cat([model.encode_texts(phrases[i:i + 1024]) for i in range(0, len(phrases), 1024)])
    sims = targets.to(model.device) @ feats.T
    best = sims.max(dim=1)
    seconds = time.perf_counter() - started
    return Outcome([phrases[i] for i in best.indices.tolist()], best.values.tolist(), seconds)


@torch.no_grad()
def true_caption(model, targets: torch.Tensor, scenes: list[shapes.Scene], pair: bool) -> Outcome:
    prompts, sims = [], []
    for target, scene in zip(targets, scenes):
        if pair:
            caps = [shapes.caption(s, t) for t in shapes.PAIR_TEMPLATES
                    for s in (scene, shapes.Scene(scene.background, scene.objects[::-1]))]
        else:
            caps = [shapes.caption(scene, t) for t in shapes.SINGLE_TEMPLATES]
        s = model.encode_texts(caps) @ target.to(model.device)
        prompts.append(caps[int(s.argmax())])
        sims.append(float(s.max()))
    return Outcome(prompts, sims, 0.0)


# --- table ---------------------------------------------------------------------------------------------
@dataclass
class Row:
    method: str
    L: str
    vocab: str
    restarts: str
    outcome: Outcome


def mean(xs) -> float:
    xs = [x for x in xs if x == x]
    return sum(xs) / len(xs) if xs else float("nan")


def junk_share(model, prompts: list[str], world: set[int]) -> float:
    ids = [i for p in prompts for i in model.tokenize(p)]
    return sum(i not in world for i in ids) / max(1, len(ids))


def fmt_prompt(p: str, width: int = 60) -> str:
    p = p.replace("|", "\\|").replace("`", "'")
    return "`" + (p if len(p) <= width else p[:width - 1] + "…") + "`"


def share(xs: list[bool]) -> str:
    return f"{sum(xs)}/{len(xs)} ({100 * sum(xs) / len(xs):.0f} %)" if xs else "—"


def tables(model, rows: list[Row], n_single: int, scenes: list[shapes.Scene], world: set[int],
           model_right: list[bool]) -> tuple[str, str]:
    """Markdown tables for the single-object and the two-object images; examples are each set's first image."""
    head1 = ("| method | L | vocab | restarts | mean sim | attribute recall | recall where the model is right "
             "| strict | colour | shape | junk tokens | s / image | example (image 1) |\n"
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    head2 = ("| method | L | vocab | restarts | mean sim | both objects | largest object | junk tokens "
             "| example (image 1) |\n|---|---|---|---|---|---|---|---|---|")
    out1, out2 = [head1], [head2]
    for r in rows:
        o = r.outcome
        idx = o.indices if o.indices is not None else list(range(len(scenes)))
        items = list(zip(idx, o.prompts, o.similarities))
        single = [(p, sim, scenes[i]) for i, p, sim in items if i < n_single]
        right = [model_right[i] for i, _, _ in items if i < n_single]
        pair = [(p, sim, scenes[i]) for i, p, sim in items if i >= n_single]
        truth = r.method.startswith("true caption")
        per_image = f"{o.seconds / len(items):.2f}" if o.seconds else "—"
        if single:
            m = [match_single(p, sc) for p, _, sc in single]
            cols = ["—"] * 5 if truth else [share([x.recall for x in m]),
                                            share([x.recall for x, ok in zip(m, right) if ok]),
                                            *(share([getattr(x, k) for x in m]) for k in ("strict", "colour", "shape"))]
            out1.append(f"| {r.method} | {r.L} | {r.vocab} | {r.restarts} | {mean([x for _, x, _ in single]):.3f} | "
                        + " | ".join(cols) + f" | {100 * junk_share(model, [p for p, _, _ in single], world):.0f} % "
                        f"| {per_image} | {fmt_prompt(single[0][0])} |")
        if pair:
            pm = [match_pair(p, sc) for p, _, sc in pair]
            cols = ["—"] * 2 if truth else [share([b for b, _ in pm]), share([g for _, g in pm])]
            out2.append(f"| {r.method} | {r.L} | {r.vocab} | {r.restarts} | {mean([x for _, x, _ in pair]):.3f} | "
                        + " | ".join(cols) + f" | {100 * junk_share(model, [p for p, _, _ in pair], world):.0f} % "
                        f"| {fmt_prompt(pair[0][0])} |")
    return "\n".join(out1), "\n".join(out2)


def zero_shot_correct(model, images, scenes) -> list[bool]:
    """Per image: does the model itself classify colour AND shape right (the training script's zero-shot
    prompts "a {colour} object" / "a photo of a {shape}")? PEZ cannot be expected to beat this."""
    feats = model.encode_images(images)
    right = [True] * len(scenes)
    for classes, template, attr in ((shapes.COLORS, "a {} object", "color"),
                                    (shapes.SHAPES, "a photo of a {}", "shape")):
        text = model.encode_texts([template.format(c) for c in classes])
        for i, p in enumerate((feats @ text.T).argmax(1).tolist()):
            right[i] &= classes[p] == getattr(scenes[i].objects[0], attr)
    return right


def distinct_rows(model) -> int:
    """How many different token-embedding rows the model has (an earlier demo tied 49,374 of them to one)."""
    return len(torch.unique(model.token_embeddings.detach().float().cpu(), dim=0))


def seed_spread(model, images, seeds: list[int], L: int, steps: int) -> tuple[list[int], list[list[str]]]:
    """Per image: how many different prompts the given seeds give (node defaults otherwise: 1 restart on CPU,
    vocabulary ``words``), and the prompts themselves (one list per seed)."""
    prompts = [[r.prompt for r in pez_core.invert(model, images, PezConfig(prompt_len=L, steps=steps, seed=s))]
               for s in seeds]
    return [len({p[i] for p in prompts}) for i in range(len(images))], prompts


def describe(scene: shapes.Scene) -> str:
    objs = " and ".join(f"a {o.size} {o.color} {o.shape} ({o.position})" for o in scene.objects)
    return f"{objs} on {scene.background}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-demo", help="a bundled name or a checkpoint path (+ .json)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (on a shared 2-core machine 1 was 2-6x faster than 2)")
    parser.add_argument("--single", type=int, default=30, help="held-out single-object images")
    parser.add_argument("--pairs", type=int, default=10, help="held-out two-object images")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lengths", default="4,8")
    parser.add_argument("--vocabs", default="full,words,bank")
    parser.add_argument("--restarts", default="1,8")
    parser.add_argument("--long", type=int, default=16,
                        help="also run this (longer) prompt length with 1 restart; 0: skip")
    parser.add_argument("--reference-images", type=int, default=10,
                        help="the naive reference loop runs on the first N single-object images (it is slow); 0: skip")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", default="0,1,11,12345",
                        help="seed spread: these seeds on the first --spread-images single-object images "
                             "(length --long, or the default; node defaults otherwise); empty: skip")
    parser.add_argument("--spread-images", type=int, default=3)
    parser.add_argument("--polish", default="off",
                        help="comma list of polish modes each PEZ setting runs with (off, prune, swap+prune)")
    parser.add_argument("--out", help="also write the markdown tables here")
    parser.add_argument("--json", help="also write every prompt of every setting here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()

    model = pez_core.load_model(args.model, device=args.device, precision="fp32")
    single_images, single_scenes = shapes.sample(SINGLE_SEED, args.single, n_objects=1)
    pair_images, pair_scenes = shapes.sample(PAIR_SEED, args.pairs, n_objects=2) if args.pairs else ([], [])
    images, scenes = single_images + pair_images, single_scenes + pair_scenes
    targets = model.encode_images(images)
    n = args.single
    world = world_token_ids(model)
    lengths = [int(x) for x in args.lengths.split(",")]
    vocabs = args.vocabs.split(",")
    restarts = [int(x) for x in args.restarts.split(",")]
    budget = args.steps * max(restarts)
    polishes = args.polish.split(",")

    def pez_name(polish: str) -> str:
        return "PEZ" if polish == "off" else f"PEZ + {polish}"
    rows: list[Row] = []

    def log(row: Row) -> None:
        rows.append(row)
        o = row.outcome
        idx = o.indices if o.indices is not None else range(len(scenes))
        hits = [match_single(p, scenes[i]).recall for i, p in zip(idx, o.prompts) if i < n]
        print(f"[{time.perf_counter() - began:5.0f} s] {row.method:<22} L={row.L:<2} {row.vocab:<7} "
              f"R={row.restarts:<2} "
              f"sim {mean(o.similarities[:n]):.3f} recall {mean(hits):.2f} {o.seconds:6.1f} s  e.g. {o.prompts[0]!r}",
              flush=True)

    caption = true_caption(model, targets[:n], single_scenes, pair=False)
    inter = run_interrogator(model, targets[:n], single_phrases())
    if args.pairs:
        pc = true_caption(model, targets[n:], pair_scenes, pair=True)
        caption = Outcome(caption.prompts + pc.prompts, caption.similarities + pc.similarities, 0.0)
        ip = run_interrogator(model, targets[n:], single_phrases() + pair_phrases())
        inter = Outcome(inter.prompts + ip.prompts, inter.similarities + ip.similarities, inter.seconds + ip.seconds)
    log(Row("true caption (best template)", "—", "—", "—", caption))
    log(Row("interrogator (phrase ranking)", "—", "phrases", "—", inter))
    pez_core.invert(model, images[:2], PezConfig(prompt_len=4, steps=3, restarts=1, vocab="full"))  # warm-up
    reference_rows = []
    for L in lengths:
        for vocab in vocabs:
            for R in restarts:
                for polish in polishes:
                    log(Row(pez_name(polish), str(L), vocab, str(R),
                            run_pez(model, images, L, vocab, R, args.steps, args.seed, polish)))
        for vocab in vocabs:
            log(Row(f"random search ({budget} prompts)", str(L), vocab, "—",
                    run_random(model, targets, L, vocab, budget, args.seed)))
        if args.reference_images:
            k = min(args.reference_images, n)
            out = run_reference(model, targets[:k], L, args.steps, args.seed)
            out.indices = list(range(k))
            reference_rows.append(Row(f"reference loop (images 1–{k})", str(L), "full", "1", out))
            log(reference_rows[-1])
    if args.long:
        for vocab in vocabs:
            for polish in polishes:
                out = run_pez(model, images, args.long, vocab, 1, args.steps, args.seed, polish)
                log(Row(pez_name(polish), str(args.long), vocab, "1", out))

    notes = []
    for ref in reference_rows:  # the engine on the reference loop's images, for a like-for-like reading
        k = len(ref.outcome.indices)
        engine = next((r for r in rows if r.method == "PEZ" and r.L == ref.L and r.vocab == "full"
                       and r.restarts == "1"), None)
        if engine is None:
            continue
        e_hits = [match_single(p, single_scenes[i]).recall for i, p in enumerate(engine.outcome.prompts[:k])]
        r_hits = [match_single(p, single_scenes[i]).recall for i, p in enumerate(ref.outcome.prompts)]
        notes.append(f"On images 1–{k} at L={ref.L} (full vocabulary, 1 restart): reference loop mean sim "
                     f"{mean(ref.outcome.similarities):.3f}, recall {sum(r_hits)}/{k}, "
                     f"{1000 * ref.outcome.seconds / k / args.steps:.0f} ms/step; the engine "
                     f"{mean(engine.outcome.similarities[:k]):.3f}, {sum(e_hits)}/{k}.")

    spread_note = ""
    if args.seeds and args.spread_images:
        seeds, k = [int(x) for x in args.seeds.split(",")], min(args.spread_images, n)
        spread_length = args.long or PezConfig().prompt_len
        counts, spread_prompts = seed_spread(model, single_images[:k], seeds, spread_length, args.steps)
        spread_words = [p for per_seed in spread_prompts for p in per_seed]
        spread_note = (f"Seed spread (seeds {args.seeds}, L={spread_length}, node defaults, {args.steps} steps) "
                       f"on single-object images 1–{k}: {', '.join(map(str, counts))} different prompts of "
                       f"{len(seeds)}; junk tokens {100 * junk_share(model, spread_words, world):.0f} %; recall "
                       f"{sum(match_single(p, single_scenes[i]).recall for per in spread_prompts for i, p in enumerate(per))}"
                       f"/{len(spread_words)}.\n")
        print(spread_note, flush=True)
    model_right = zero_shot_correct(model, single_images, single_scenes)
    single_table, pair_table = tables(model, rows, n, scenes, world, model_right)
    distinct = distinct_rows(model)
    header = (f"Model `{args.model}` on {model.device} ({platform.machine()}, {torch.get_num_threads()} thread(s)), "
              f"{args.steps} steps, seed {args.seed}; {n} single-object images (seed {SINGLE_SEED}), "
              f"{args.pairs} two-object images (seed {PAIR_SEED}); {datetime.date.today().isoformat()}; "
              f"total {time.perf_counter() - began:.0f} s.\n"
              f"The model itself classifies colour and shape right (zero-shot) on {sum(model_right)}/{n} "
              f"single-object images. {distinct} of its {len(model.token_embeddings)} token rows are distinct.\n"
              f"Image 1 (single): {describe(single_scenes[0])}."
              + (f" Image 1 (two objects): {describe(pair_scenes[0])}." if pair_scenes else ""))
    text = (f"{header}\n\nSingle-object images:\n\n{single_table}\n\n" + "".join(f"{x}\n" for x in notes) + spread_note
            + (f"\nTwo-object images:\n\n{pair_table}\n" if pair_scenes else ""))
    print()
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        truth = [describe(sc) for sc in scenes]
        dump = [{"method": r.method, "L": r.L, "vocab": r.vocab, "restarts": r.restarts, "seconds": r.outcome.seconds,
                 "images": [{"truth": truth[i], "prompt": p, "similarity": sim} for i, p, sim in
                            zip(r.outcome.indices or range(len(scenes)), r.outcome.prompts, r.outcome.similarities)]}
                for r in rows]
        Path(args.json).write_text(json.dumps(dump, indent=1))


if __name__ == "__main__":
    main()
