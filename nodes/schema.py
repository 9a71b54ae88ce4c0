"""The schema parts the PEZ nodes share: the node shape and the inputs every optimising node has.

Defaults and limits come from pez_core (``PezConfig``), so a node and the library never disagree.
"""
from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io

from .. import pez_core

CATEGORY = "PEZ"
DEFAULTS = pez_core.PezConfig()
SEED_MAX = 0xFFFFFFFFFFFFFFFF
TIME_BUDGET_MAX = 24 * 3600.0

PezModelType = io.Custom("PEZ_MODEL")


# what people type into the node search for each node (the words other captioning tools use)
SEARCH_ALIASES = {
    "PEZ_LoadModel": ["clip loader", "open_clip", "load clip"],
    "PEZ_InvertImage": ["caption", "interrogate", "clip interrogator", "image to prompt", "img2prompt",
                        "describe image", "reverse prompt", "hard prompt"],
    "PEZ_StylePrompt": ["style", "style prompt", "style from images", "img2prompt", "interrogate style"],
    "PEZ_DistillPrompt": ["shorten prompt", "compress prompt", "summarize prompt", "prompt length"],
    "PEZ_ConcatPrompts": ["join prompts", "concatenate", "combine text", "text concat"],
    "PEZ_PromptSimilarity": ["clip score", "prompt score", "image text similarity"],
    "PEZ_CombineModels": ["joint prompt", "sdxl clip", "two encoders"],
    "PEZ_CaptionFolder": ["caption", "caption folder", "dataset", "lora captions", "interrogate folder",
                          "batch caption"],
}


def search_aliases(node_id: str) -> dict[str, list[str]]:
    """``search_aliases`` for a node's schema where this ComfyUI has them. Workaround (ComfyUI 0.3.75): its
    Schema has no such field."""
    return {"search_aliases": SEARCH_ALIASES[node_id]} if "search_aliases" in getattr(
        io.Schema, "__dataclass_fields__", {}) else {}


def node_schema(node_id: str, display_name: str, description: str, inputs: list[io.Input],
                outputs: list[io.Output], **extra: Any) -> io.Schema:
    """A PEZ node: in the PEZ category, an output node (its result shows on the node), told its own id, found
    by its search aliases too."""
    return io.Schema(node_id=node_id, display_name=display_name, category=CATEGORY, description=description,
                     inputs=inputs, outputs=outputs, hidden=[io.Hidden.unique_id], is_output_node=True,
                     **search_aliases(node_id), **extra)


def text_input(name: str, tooltip: str, display_name: str | None = None) -> io.Input:
    """A required multiline text, empty by default (the node says what to do when it stays empty)."""
    return io.String.Input(name, display_name=display_name, multiline=True, default="", tooltip=tooltip)


def prompt_outputs(prompt_name: str, prompt_tooltip: str, similarity_tooltip: str,
                   one_per_image: bool = False) -> list[io.Output]:
    """The learned prompt, its similarity and the learned words alone (appended last: saved workflows keep their
    links); ``one_per_image``: lists, one item per image."""
    return [io.String.Output("prompt", display_name=prompt_name, is_output_list=one_per_image, tooltip=prompt_tooltip),
            io.Float.Output("similarity", display_name="similarity", is_output_list=one_per_image,
                            tooltip=similarity_tooltip),
            io.String.Output("learned_prompt", display_name="learned_prompt", is_output_list=one_per_image, tooltip=(
                "The learned words alone, without the template's own words (without a template: the prompt)."))]


def model_input() -> io.Input:
    return PezModelType.Input("pez_model", tooltip="The CLIP model from PEZ Load Model. Use the CLIP your "
                              "diffusion model reads prompts with (ViT-L-14 · openai for SD 1.x, SDXL and Flux).")


def prompt_length_input(tooltip: str | None = None) -> io.Input:
    return io.Int.Input("prompt_length", default=DEFAULTS.prompt_len, min=1, max=pez_core.MAX_PROMPT_TOKENS,
                        tooltip=tooltip or (
        f"Length of the learned prompt in CLIP tokens. {DEFAULTS.prompt_len} named the object best in our "
        "measurements; 16 (the PEZ paper's) transfers best between models but adds stray words; at most "
        f"{pez_core.MAX_PROMPT_TOKENS} (CLIP's limit)."))


def steps_input() -> io.Input:
    return io.Int.Input("steps", default=DEFAULTS.steps, min=1, max=pez_core.MAX_STEPS, tooltip=(
        f"Optimisation steps. {DEFAULTS.steps} is the paper's default; a few hundred give a usable draft. "
        "The node shows the best prompt so far while it runs; Cancel stops it (without a result)."))


def restarts_input() -> io.Input:
    auto = DEFAULTS.for_device(torch.device("cuda")).restarts, DEFAULTS.for_device(torch.device("cpu")).restarts
    return io.Int.Input("restarts", display_name="restarts (0 = auto)", default=0, min=0, max=pez_core.MAX_RESTARTS,
                        tooltip=(f"Random starts tried side by side; the best wins. auto: {auto[0]} on a GPU, "
                                 f"{auto[1]} on the CPU. More find better prompts and take longer."))


def learning_rate_input() -> io.Input:
    low, high = pez_core.LR_RANGE
    return io.Float.Input("learning_rate", default=DEFAULTS.lr, min=low, max=high, step=0.01, round=0.001,
                          tooltip=f"AdamW learning rate of the soft prompt (the paper uses {DEFAULTS.lr}).")


def seed_input() -> io.Input:
    return io.Int.Input("seed", default=DEFAULTS.seed, min=0, max=SEED_MAX, control_after_generate=True,
                        tooltip="Seed of the random starting prompt: the same seed and settings give the same prompt.")


def vocabulary_input() -> io.Input:
    return io.Combo.Input("vocabulary", options=list(pez_core.VOCAB_MODES), default=DEFAULTS.vocab, tooltip=(
        "Tokens PEZ may use. words: whole lowercase words (readable prompts); ascii: any printable "
        "token, incl. word pieces and punctuation; full: every CLIP token, incl. emoji and other scripts "
        "(highest similarity, least readable)."))


def blocklist_input() -> io.Input:
    return io.String.Input("blocklist", multiline=True, default="", optional=True, tooltip=(
        "Words the prompt must never contain, separated by commas or new lines "
        "(e.g. artist names or unwanted words). Every CLIP token of these words is banned."))


def negative_inputs() -> list[io.Input]:
    return [
        io.Image.Input("negative_images", optional=True, tooltip=(
            "Optional images the prompt should NOT describe: their features push the prompt away. Together "
            "with negative_text they weigh "
            f"{pez_core.DEFAULT_NEGATIVE_WEIGHT}: the similarity to the images minus "
            f"{pez_core.DEFAULT_NEGATIVE_WEIGHT} x the mean similarity to the negatives, however many.")),
        io.String.Input("negative_text", multiline=True, default="", optional=True, tooltip=(
            "Optional text the prompt should move away from (e.g. 'blurry, watermark'). Empty: none.")),
    ]


def stopping_inputs() -> list[io.Input]:
    """Polishing and the stopping rules: optional, and after every older input, so saved workflows keep
    their widget order."""
    return [
        io.Combo.Input("polish", options=list(pez_core.POLISH_MODES), default=DEFAULTS.polish, optional=True,
                       tooltip=(
            "After the steps, tidy the prompt. swap+prune: try better words, then drop words that barely help "
            "(the best in our tests). swap or prune: one of the two. off: keep the prompt as found. "
            "Never makes the prompt score lower.")),
        io.Float.Input("time_budget", display_name="time limit, s (0 = none)", default=0.0, min=0.0,
                       max=TIME_BUDGET_MAX, step=1.0, optional=True, tooltip=(
            "Seconds for the whole run; then the node returns its best prompt. With a limit, the prompt depends "
            "on the machine's speed; without one, the same seed always gives the same prompt.")),
        io.Float.Input("target_similarity", display_name="stop at similarity (0 = off)", default=0.0, min=0.0,
                       max=1.0, step=0.01, round=0.001, optional=True,
                       tooltip="Stop as soon as the prompt reaches this similarity."),
    ]


def template_input() -> io.Input:
    """Optional, after every older input."""
    return io.String.Input("template", default=pez_core.PezConfig.template, optional=True, tooltip=(
        "Your own words around the learned ones; {} marks where they go: 'a tiger, {}', '{} in the style of "
        "ukiyo-e'. The learned words are found beside yours, so they fit them. {} alone: learned words only."))


READABILITY = ("auto", "off", "on")


def readability_inputs() -> list[io.Input]:
    """The fluency prior: optional, after every older input."""
    return [
        io.Combo.Input("readability", options=list(READABILITY), default="auto", optional=True, tooltip=(
            "Prompts that read like text: a language model picks among the candidate words. It costs a little "
            "similarity and time (the README, 'Readable prompts'). auto: on for the demo model, off elsewhere. "
            f"on, with a real CLIP: downloads {pez_core.DEFAULT_FLUENCY_MODEL} (0.55 GB) once.")),
        io.Float.Input("fluency", display_name="fluency (0 = default)", default=0.0, min=0.0,
                       max=pez_core.FLUENCY_MAX, step=0.05, round=0.001, optional=True, tooltip=(
            f"Advanced: how much readability counts when it is on (default {pez_core.READABLE_FLUENCY}). "
            "Higher reads better and matches the image less.")),
    ]
