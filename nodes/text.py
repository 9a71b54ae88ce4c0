"""Concat Prompts (no model) and PEZ Prompt Similarity."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from .. import pez_core
from .progress import text_ui
from .schema import model_input, node_schema, text_input
from .server import send_node_text
from .session import device_session
from .values import images_of, require_tokens

log = logging.getLogger(__name__)

MAX_TOKENS = pez_core.MAX_PROMPT_TOKENS


def token_count(text: str, name: str = "the joined prompt") -> int:
    return len(pez_core.clip_tokenizer().encode(text, name))


def too_long_warning(count: int) -> str:
    return (f"{count} CLIP tokens, over CLIP's limit of {MAX_TOKENS}: ComfyUI's CLIP Text Encode reads it in "
            f"{MAX_TOKENS}-token chunks (the later chunks count less) and other tools cut it after token "
            f"{MAX_TOKENS}. Shorten it, e.g. with PEZ Distill Prompt.")


class ConcatPrompts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        def prompt(name: str, optional: bool) -> io.Input:
            return io.String.Input(name, multiline=True, default="", optional=optional, tooltip=(
                "A prompt part: type it, or connect a prompt (e.g. from PEZ Invert Image)."
                + (" Optional; empty parts are skipped." if optional else " Empty parts are skipped.")))

        return node_schema(
            "PEZ_ConcatPrompts", "Concat Prompts",
            description="Join prompts, e.g. a subject and a style prompt ('a tiger' + ', ' + style), and count "
                        "the CLIP tokens of the result; warns on the node past CLIP's 75 tokens.",
            inputs=[
                prompt("prompt_1", False), prompt("prompt_2", False),
                io.String.Input("separator", default=", ", tooltip=(
                    "Put between the parts (default ', '). A separator already at the end or start of a part is "
                    "not doubled.")),
                prompt("prompt_3", True), prompt("prompt_4", True),
            ],
            outputs=[
                io.String.Output("prompt", display_name="prompt", is_output_list=True, tooltip=(
                    "The joined prompt (a list when a connected prompt is a list, one join per item).")),
                io.Int.Output("token_count", display_name="token_count", is_output_list=True,
                              tooltip="CLIP tokens of the joined prompt (CLIP reads 75 at once)."),
            ],
            is_input_list=True,
        )

    @classmethod
    def execute(cls, prompt_1: list, prompt_2: list, separator: list, prompt_3: list | None = None,
                prompt_4: list | None = None) -> io.NodeOutput:
        named = {name: c for name, c in zip(("prompt_1", "prompt_2", "prompt_3", "prompt_4"),
                                            (prompt_1, prompt_2, prompt_3, prompt_4)) if c}
        for name, column in {**named, "separator": separator}.items():  # bounded before any tokenizing
            for value in column:
                pez_core.check_text(str(value), name)
        n = max((len(c) for c in named.values()), default=1)  # lists (e.g. several inverted prompts): one join each
        joined, counts, warnings = [], [], []
        for i in range(n):
            sep = separator[min(i, len(separator) - 1)]
            label = f"joined prompt {i + 1}" if n > 1 else "the joined prompt"
            text = pez_core.check_text(pez_core.join_prompts([str(c[min(i, len(c) - 1)]) for c in named.values()], sep), label)
            count = token_count(text, label)
            joined.append(text)
            counts.append(count)
            if not text:
                warnings.append(f"{label} is empty: every part is empty or only the separator")
            elif count > MAX_TOKENS:
                warnings.append((f"prompt {i + 1}: " if n > 1 else "") + too_long_warning(count))
        for w in warnings:
            log.warning("Concat Prompts: %s", w)
        send_node_text(cls.hidden.unique_id, "\n".join(warnings) or ", ".join(f"{c} CLIP tokens" for c in counts))
        ui = {"text": joined, "pez_token_count": counts}
        if warnings:
            ui["pez_warning"] = warnings
        return io.NodeOutput(joined, counts, ui=ui)


class PromptSimilarity(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "PEZ_PromptSimilarity", "PEZ Prompt Similarity",
            description="How well CLIP matches a prompt to images and/or another prompt. Compare an inverted "
                        "prompt with a hand-written one on the same image.",
            inputs=[
                model_input(),
                # ids avoid "prompt": output nodes also get a hidden input of that name (the whole graph)
                text_input("text", "The prompt to score (type it or connect one, e.g. from PEZ Invert Image).",
                           display_name="prompt"),
                io.Image.Input("images", optional=True, tooltip=(
                    "Optional images to score the prompt against (a batch: the mean over the images).")),
                io.String.Input("other_text", display_name="other prompt", multiline=True, default="", optional=True,
                                tooltip="Optional second prompt to compare with (text-to-text). Empty: not used."),
            ],
            outputs=[io.Float.Output("similarity", display_name="similarity", tooltip=(
                "Mean CLIP cosine similarity to every image and the other prompt. Image–text and text–text "
                "similarities differ in scale (a good caption scores ~0.3 with its image), so compare like "
                "with like."))],
        )

    @classmethod
    def execute(cls, pez_model: pez_core.PezModel, text: str, images=None, other_text: str = "") -> io.NodeOutput:
        if not pez_core.check_text(text, "prompt").strip():
            raise pez_core.PezError("the prompt to score is empty; type or connect a prompt")
        require_tokens(text, "the prompt to score")
        other = pez_core.check_text(other_text, "other prompt").strip() or None
        if other is not None:
            require_tokens(other, "the other prompt")
        if images is None and other is None:
            raise pez_core.PezError("nothing to compare the prompt with: connect images or give another prompt")
        with device_session(pez_model):
            pictures = images_of(images, "images")
            scores = pez_core.score(pez_model, text, images=pictures or None, other_texts=other)[0].tolist()
        labels = [f"image {i + 1}" for i in range(len(pictures))] + (["other prompt"] if other else [])
        similarity = sum(scores) / len(scores)
        send_node_text(cls.hidden.unique_id, f"similarity {similarity:.4f}\n"
                       + " · ".join(f"{label}: {s:.4f}" for label, s in zip(labels, scores, strict=True)))
        return io.NodeOutput(similarity, ui=text_ui([text], [similarity]))
