"""Prompts around your own words (templates): does learning inside the template pay, and what does it cost?

``PezConfig(template="a tiger, {}")`` learns only the slot's tokens while the text tower reads the whole
prompt. Three measurements, each against what a user could do without a template, at the same steps:

1. Planted prompts (random-weight ViT-B-32, as in ``planted.py``): the target is the text feature of a planted
   prompt of 8 single-token words, so that text scores 1.0. The first 4 words are the template's fixed words
   (``"w1 w2 w3 w4 {}"``) and 4 are learned in the slot; against (a) all 8 learned from scratch and (b) 4 learned
   alone against the same target, then joined after the 4 fixed words by Concat Prompts' rule (separator " ",
   as the template joins them). Each whole prompt's similarity to the target, and the planted words it holds.
2. Style with a subject (the bundled demo model): style images of several shapes (never a star), all in one
   colour on one background; ``style`` with ``template="a star, {}"`` against Concat of "a star" and a style
   prompt learned without the template (separator ", "), both scored against held-out images of a star of that
   colour on that background. Does the learned part name a shape (``pez_core.demo.grading``)?
3. Cost: seconds per step of 4 fixed + 4 learned tokens against 8 learned, same model, steps, target, polish off.

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python benchmarks/template.py
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pez_core  # noqa: E402
from pez_core import join_prompts  # noqa: E402
from pez_core.demo import shapes  # noqa: E402
from pez_core.demo.grading import shape_mentions, words_of  # noqa: E402
from planted import planted_ids, recovered  # noqa: E402

PARTS = ("planted", "style", "cost")
SUBJECT = "star"                                   # the style part's subject: never in a style image
STYLE_SHAPES = tuple(s for s in shapes.SHAPES if s != SUBJECT)
STYLE_SEED, HELD_OUT_SEED = 4_242, 4_243
COST_SEED = 99                                      # the cost part's planted text (its target only)
COST_TOLERANCE = 0.05                               # "no slower": the template's median within 5 % of the plain one


def verdict(met: bool) -> str:
    return "met" if met else "**NOT met**"


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


# --- 1. planted prompts ---------------------------------------------------------------------------------------
def one_planted(model, seed: int, args) -> list[dict]:
    ids = planted_ids(model, args.length, seed)
    fixed_ids, slot_ids = ids[:args.fixed], ids[args.fixed:]
    fixed, text = model.decode(fixed_ids), model.decode(ids)
    if model.tokenize(fixed) != fixed_ids or model.tokenize(model.decode(slot_ids)) != slot_ids:
        raise RuntimeError(f"planted text {text!r} does not split into its fixed and slot words at token {args.fixed}")
    with torch.no_grad():
        target = model.encode_texts([text])[0]
    objective = pez_core.Objective.stack([[(target, 1.0)]])
    slot_len = len(slot_ids)
    base = pez_core.PezConfig(steps=args.steps, seed=seed, polish=args.polish, restarts=args.restarts)

    def run(method: str, prompt_len: int, template: str, join) -> dict:
        config = dataclasses.replace(base, prompt_len=prompt_len, template=template)
        started = time.perf_counter()
        result = pez_core.optimize(model, objective, config)[0]
        seconds = time.perf_counter() - started
        learned = result.learned_prompt if result.learned_prompt is not None else result.prompt
        whole = join(learned)
        with torch.no_grad():
            similarity = float(model.encode_texts([whole])[0] @ target)
        whole_ids = model.tokenize(whole)
        row = {"part": "planted", "seed": seed, "planted": text, "fixed": fixed, "method": method, "prompt": whole,
               "learned": learned, "similarity": similarity, "engine_similarity": result.similarity,
               # the slot's planted words anywhere in the learned words (from scratch: in the whole prompt)
               "slot_recovered": recovered(slot_ids, model.tokenize(learned)), "slot_words": slot_len,
               "recovered": recovered(ids, whole_ids), "words": len(ids), "seconds": seconds, "steps": result.steps}
        logging.info("planted %d, %s: %.4f %r", seed, method, similarity, whole)
        return row

    return [
        run("template", slot_len, f"{fixed} {{}}", lambda learned: f"{fixed} {learned}".strip()),
        run("from scratch", len(ids), "{}", lambda learned: learned),
        run("concat", slot_len, "{}", lambda learned: join_prompts([fixed, learned], " ")),
    ]


def planted_table(rows: list[dict]) -> str:
    lines = ["| planted (seed) | method | whole prompt | similarity | slot words recovered | planted words recovered "
             "| wall s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['method']} | `{r['prompt']}` | {r['similarity']:.4f} | "
                     f"{r['slot_recovered']}/{r['slot_words']} | {r['recovered']}/{r['words']} | {r['seconds']:.1f} |")
    lines += ["", "| method (mean over planted prompts) | similarity | slot words recovered | planted words recovered |",
              "|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        runs = [r for r in rows if r["method"] == method]
        lines.append(f"| {method} | {mean(r['similarity'] for r in runs):.4f} | "
                     f"{mean(r['slot_recovered'] for r in runs):.2f}/{runs[0]['slot_words']} | "
                     f"{mean(r['recovered'] for r in runs):.2f}/{runs[0]['words']} |")
    return "\n".join(lines)


def planted_targets(rows: list[dict]) -> list[dict]:
    by = {m: [r for r in rows if r["method"] == m] for m in ("template", "from scratch", "concat")}
    targets = []
    for key, what in (("similarity", "similarity"), ("recovered", "planted words recovered (of all)")):
        t = mean(r[key] for r in by["template"])
        others = {m: mean(r[key] for r in by[m]) for m in ("from scratch", "concat")}
        wins = {m: sum(a[key] > b[key] for a, b in zip(by["template"], by[m])) for m in others}
        fmt = "{:.4f}" if key == "similarity" else "{:.2f}"
        measured = (f"template {fmt.format(t)}; " + "; ".join(
            f"{m} {fmt.format(v)} (template higher in {wins[m]} of {len(by[m])})" for m, v in others.items()))
        targets.append({"part": "planted", "target": f"the template beats from scratch and concat on mean {what}",
                        "measured": measured, "met": all(t > v for v in others.values())})
    return targets


# --- 2. style with a subject ----------------------------------------------------------------------------------
def draw(rng: np.random.Generator, shape: str, colour: str, background: str) -> shapes.Scene:
    obj = shapes.Obj(shape, colour, str(rng.choice(shapes.SIZES)), str(rng.choice(shapes.POSITIONS)),
                     dx=float(rng.uniform(-3, 3)), dy=float(rng.uniform(-3, 3)), scale=float(rng.uniform(0.85, 1.15)),
                     angle=float(rng.uniform(-15, 15)))
    return shapes.Scene(background, (obj,))


def style_images(colour: str, background: str, n: int, held_out: int):
    rng = np.random.default_rng(STYLE_SEED)
    style = [shapes.render(draw(rng, STYLE_SHAPES[i % len(STYLE_SHAPES)], colour, background)) for i in range(n)]
    rng = np.random.default_rng(HELD_OUT_SEED)
    return style, [shapes.render(draw(rng, SUBJECT, colour, background)) for _ in range(held_out)]


def one_style(model, colour: str, background: str, seed: int, args) -> list[dict]:
    images, held_out = style_images(colour, background, args.style_images, args.held_out)
    subject = f"a {SUBJECT}"
    config = pez_core.PezConfig(prompt_len=args.style_len, steps=args.style_steps, seed=seed, polish=args.style_polish,
                                restarts=args.restarts, fluency=args.fluency)
    rows = []
    for method, template in (("template", f"{subject}, {{}}"), ("concat", "{}")):
        started = time.perf_counter()
        result = pez_core.style(model, images, dataclasses.replace(config, template=template))
        seconds = time.perf_counter() - started
        learned = result.learned_prompt if result.learned_prompt is not None else result.prompt
        whole = result.prompt if method == "template" else join_prompts([subject, learned], ", ")
        rows.append({"part": "style", "colour": colour, "background": background, "seed": seed, "method": method,
                     "prompt": whole, "learned": learned, "shapes_named": sorted(shape_mentions(words_of(learned))),
                     "style_similarity": float(pez_core.score(model, whole, images).mean()), "seconds": seconds})
    scores = pez_core.score(model, [r["prompt"] for r in rows] + [subject], held_out).mean(dim=1).tolist()
    for r, s in zip(rows, scores):
        r["held_out_score"] = s
        logging.info("style %s on %s, %s: %.4f %r", colour, background, r["method"], s, r["prompt"])
    rows.append({"part": "style", "colour": colour, "background": background, "seed": seed,
                 "method": "subject alone", "prompt": subject, "learned": "", "shapes_named": [],
                 "style_similarity": float(pez_core.score(model, subject, images).mean()), "seconds": 0.0,
                 "held_out_score": scores[-1]})
    return rows


def style_table(rows: list[dict]) -> str:
    lines = [f"| colour on background (seed) | method | whole prompt | score on held-out {SUBJECT}s "
             "| similarity to the style images | shapes the learned part names | wall s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        named = ", ".join(r["shapes_named"]) or "none"
        lines.append(f"| {r['colour']} on {r['background']} ({r['seed']}) | {r['method']} | `{r['prompt']}` | "
                     f"{r['held_out_score']:.4f} | {r['style_similarity']:.4f} | "
                     f"{named if r['method'] != 'subject alone' else '—'} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def style_targets(rows: list[dict]) -> list[dict]:
    cases = [(r, c) for r in rows if r["method"] == "template"
             for c in rows if c["method"] == "concat" and (c["colour"], c["background"], c["seed"]) ==
             (r["colour"], r["background"], r["seed"])]
    higher = sum(t["held_out_score"] > c["held_out_score"] for t, c in cases)
    clean = [t for t, _ in cases if not t["shapes_named"]]
    return [
        {"part": "style", "target": f"the template's whole prompt scores higher on held-out {SUBJECT}s than Concat",
         "measured": f"higher in {higher} of {len(cases)} (template {mean(t['held_out_score'] for t, _ in cases):.4f}, "
                     f"concat {mean(c['held_out_score'] for _, c in cases):.4f} on average)",
         "met": higher == len(cases)},
        {"part": "style", "target": "the template's learned part names no shape",
         "measured": f"no shape in {len(clean)} of {len(cases)}" + "".join(
             f"; {t['colour']} on {t['background']}: {', '.join(t['shapes_named'])}"
             for t, _ in cases if t["shapes_named"]),
         "met": len(clean) == len(cases)},
    ]


# --- 3. cost --------------------------------------------------------------------------------------------------
def cost(model, args) -> dict:
    ids = planted_ids(model, args.length, COST_SEED)
    fixed = model.decode(ids[:args.fixed])
    with torch.no_grad():
        objective = pez_core.Objective.stack([[(model.encode_texts([model.decode(ids)])[0], 1.0)]])
    cases = {"plain": pez_core.PezConfig(prompt_len=len(ids), polish="off", restarts=args.restarts),
             "template": pez_core.PezConfig(prompt_len=len(ids) - args.fixed, polish="off", restarts=args.restarts,
                                            template=f"{fixed} {{}}")}
    for config in cases.values():  # warm-up: first-call costs out of the timed runs
        pez_core.optimize(model, objective, dataclasses.replace(config, steps=2))
    runs: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}  # this process's CPU time: less hurt by other jobs
    for repeat in range(args.cost_repeats):
        order = list(cases) if repeat % 2 == 0 else list(cases)[::-1]  # alternate which goes first
        for name in order:
            config = dataclasses.replace(cases[name], steps=args.cost_steps, seed=repeat)
            started, started_cpu = time.perf_counter(), time.process_time()
            result = pez_core.optimize(model, objective, config)[0]
            runs[name].append((time.perf_counter() - started) / result.steps)
            cpu[name].append((time.process_time() - started_cpu) / result.steps)
            logging.info("cost %s, run %d: %.1f ms/step (%.1f ms CPU)", name, repeat, 1000 * runs[name][-1],
                         1000 * cpu[name][-1])
    medians = {name: statistics.median(values) for name, values in runs.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    return {"part": "cost", "steps": args.cost_steps, "repeats": args.cost_repeats, "fixed": args.fixed,
            "learned": len(ids) - args.fixed, "plain_learned": len(ids), "seconds_per_step": runs, "median": medians,
            "ratio": medians["template"] / medians["plain"], "cpu_seconds_per_step": cpu, "cpu_median": cpu_medians,
            "cpu_ratio": cpu_medians["template"] / cpu_medians["plain"]}


def cost_table(c: dict) -> str:
    lines = ["| prompt | median ms/step (wall) | every run, ms/step (wall) | median CPU ms/step | every run, CPU ms/step |",
             "|---|---|---|---|---|"]
    labels = {"plain": f"plain, {c['plain_learned']} learned",
              "template": f"template, {c['fixed']} fixed + {c['learned']} learned"}
    for name, label in labels.items():
        lines.append(f"| {label} | {1000 * c['median'][name]:.1f} | "
                     f"{', '.join(f'{1000 * s:.1f}' for s in c['seconds_per_step'][name])} | "
                     f"{1000 * c['cpu_median'][name]:.1f} | "
                     f"{', '.join(f'{1000 * s:.1f}' for s in c['cpu_seconds_per_step'][name])} |")
    return "\n".join(lines) + f"\n\ntemplate / plain: **{c['ratio']:.3f}x** wall, {c['cpu_ratio']:.3f}x CPU time"


def cost_targets(c: dict) -> list[dict]:
    return [{"part": "cost", "target": f"a templated step no slower than a plain one (median within "
                                       f"{COST_TOLERANCE:.0%})",
             "measured": f"{1000 * c['median']['template']:.1f} against {1000 * c['median']['plain']:.1f} ms/step "
                         f"({c['ratio']:.3f}x; CPU time {c['cpu_ratio']:.3f}x, not judged)",
             "met": c["ratio"] <= 1 + COST_TOLERANCE}]


# --- main -----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--model", default="ViT-B-32", help="the planted and cost parts' model (or a checkpoint file)")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--model-seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--length", type=int, default=8, help="planted words in all")
    parser.add_argument("--fixed", type=int, default=4, help="of them, fixed in the template (the rest are learned)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="one planted prompt per seed")
    parser.add_argument("--steps", type=int, default=300, help="steps of every planted run")
    parser.add_argument("--polish", default="off", choices=pez_core.POLISH_MODES,
                        help="polishing of the planted runs (off: the PEZ loops alone, at equal steps)")
    parser.add_argument("--restarts", type=int, help="restarts of every run (default: the engine's for the device)")
    parser.add_argument("--demo-model", default="shapes-demo")
    parser.add_argument("--pairs", nargs="+", default=["red:black", "blue:white", "yellow:gray"],
                        help="colour:background of the style images and the held-out stars")
    parser.add_argument("--style-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--style-images", type=int, default=10)
    parser.add_argument("--held-out", type=int, default=6, help=f"held-out images of a {SUBJECT}")
    parser.add_argument("--style-len", type=int, default=8, help="learned tokens of the style runs")
    parser.add_argument("--style-steps", type=int, default=300)
    parser.add_argument("--style-polish", default="swap+prune", choices=pez_core.POLISH_MODES)
    parser.add_argument("--fluency", type=float, help="fluency weight of the style runs (default: the model's)")
    parser.add_argument("--cost-steps", type=int, default=20)
    parser.add_argument("--cost-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    if not 0 < args.fixed < args.length:
        parser.error("--fixed must be at least 1 and below --length")
    pairs = []
    for pair in args.pairs:
        colour, _, background = pair.partition(":")
        if colour not in shapes.COLORS or background not in shapes.BACKGROUNDS or colour == background:
            parser.error(f"--pairs {pair!r}: give colour:background, a colour of {', '.join(shapes.COLORS)} on "
                         f"another of {', '.join(shapes.BACKGROUNDS)}")
        pairs.append((colour, background))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                     "date": time.strftime("%Y-%m-%d %H:%M"), "threads": args.threads, "args": {
                         k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "targets": []}
    out = [f"benchmarks/template.py, {results['machine']}, torch threads {args.threads}, {results['date']} "
           "(timings on a shared machine are noisy)"]
    model = None
    if {"planted", "cost"} & set(args.parts):
        torch.manual_seed(args.model_seed)  # random weights: the same model in every process
        pretrained = None if Path(args.model).is_file() else args.pretrained
        model = pez_core.load_model(args.model, pretrained, device="cpu")
    if "planted" in args.parts:
        rows = [r for seed in args.seeds for r in one_planted(model, seed, args)]
        results["planted"] = rows
        results["targets"] += planted_targets(rows)
        out += ["", f"## 1. Planted prompts ({args.model}, {args.length} words, {args.fixed} fixed, "
                    f"{args.steps} steps, polish {args.polish})", "", planted_table(rows)]
    if "style" in args.parts:
        demo = pez_core.load_model(args.demo_model, device="cpu")
        rows = [r for colour, background in pairs for seed in args.style_seeds
                for r in one_style(demo, colour, background, seed, args)]
        results["style"] = rows
        results["targets"] += style_targets(rows)
        out += ["", f"## 2. Style with a subject ({args.demo_model}, template 'a {SUBJECT}, {{}}', {args.style_len} "
                    f"learned tokens, {args.style_steps} steps, polish {args.style_polish}, fluency "
                    f"{'the model default' if args.fluency is None else args.fluency}, {args.style_images} style "
                    f"images of {', '.join(STYLE_SHAPES)}, {args.held_out} held-out {SUBJECT}s)", "", style_table(rows)]
    if "cost" in args.parts:
        c = cost(model, args)
        results["cost"] = c
        results["targets"] += cost_targets(c)
        out += ["", f"## 3. Cost ({args.model}, {args.cost_steps} steps x {args.cost_repeats} runs each, polish "
                    "off, alternating order)", "", cost_table(c)]
    results["seconds"] = time.perf_counter() - began
    out += ["", "## Targets", ""] + [f"- {t['part']}: {t['target']}: {t['measured']} — {verdict(t['met'])}"
                                     for t in results["targets"]]
    out.append(f"\n{results['seconds']:.0f} s in all")
    sys.stdout.write("\n".join(out) + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
