"""PEZ Invert Image (one prompt per image) and Style Prompt from Images (one prompt for them all)."""
from __future__ import annotations

from comfy_api.latest import io

from .. import pez_core
from .common import (CATEGORY, LiveProgress, blocklist_input, check_choices, device_session, first, images_of,
                     learning_rate_input, log_results, make_config, model_input, negative_inputs,
                     prompt_length_input, restarts_input, seed_input, steps_input, text_ui, texts_of,
                     vocabulary_input)


def _inputs(images_tooltip: str) -> list[io.Input]:
    return [
        model_input(),
        io.Image.Input("images", tooltip=images_tooltip),
        prompt_length_input(),
        steps_input(),
        restarts_input(),
        learning_rate_input(),
        seed_input(),
        vocabulary_input(),
        blocklist_input(),
        *negative_inputs(),
    ]


def _schema(node_id: str, display_name: str, description: str, images_tooltip: str,
            outputs: list[io.Output]) -> io.Schema:
    """What both image nodes share: list inputs (images of different sizes), a result shown on the node."""
    return io.Schema(node_id=node_id, display_name=display_name, category=CATEGORY, description=description,
                     inputs=_inputs(images_tooltip), outputs=outputs, hidden=[io.Hidden.unique_id],
                     is_input_list=True, is_output_node=True)


def _run(cls: type[io.ComfyNode], task, kw: dict) -> list[pez_core.PezResult]:
    """Shared body: unwrap the list inputs, clone the images, optimise with live progress."""
    model = first(kw["pez_model"])
    config = make_config(
        model, prompt_length=first(kw["prompt_length"]), steps=first(kw["steps"]), seed=first(kw["seed"]),
        vocabulary=first(kw["vocabulary"]), restarts=first(kw["restarts"], 0),
        learning_rate=first(kw["learning_rate"], 0.1), blocklist=first(kw.get("blocklist"), ""))
    with device_session(model):
        images = images_of(kw["images"])
        if not images:
            raise pez_core.PezError("no images were given; connect an IMAGE (a batch or a list of images)")
        result = task(model, images, config, negative_images=images_of(kw.get("negative_images")) or None,
                      negative_texts=texts_of(kw.get("negative_text")) or None,
                      callback=LiveProgress(cls.hidden.unique_id, config.steps))
    return result if isinstance(result, list) else [result]


class InvertImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            "PEZ_InvertImage", "PEZ Invert Image",
            "Learn a hard text prompt that CLIP matches to the image (PEZ): one prompt per image. "
            "Connect the prompt to CLIP Text Encode to generate variations of the image.",
            "Images to describe, one prompt each. A batch, or a list of images of different "
            "sizes; all are optimised together in one run.",
            [
                io.String.Output("prompt", display_name="prompt", is_output_list=True, tooltip=(
                    "The learned prompt, one per image. For a single image it is an ordinary string; for "
                    "several, a list: nodes after it (e.g. CLIP Text Encode → KSampler) run once per prompt.")),
                io.Float.Output("similarity", display_name="similarity", is_output_list=True, tooltip=(
                    "CLIP cosine similarity of each prompt to its image (ordinary image–caption pairs "
                    "score about 0.3).")),
            ])

    @classmethod
    def validate_inputs(cls, vocabulary) -> bool | str:
        return check_choices(vocabulary=(vocabulary, pez_core.VOCAB_MODES))

    @classmethod
    def execute(cls, **kw) -> io.NodeOutput:
        results = _run(cls, pez_core.invert, kw)
        log_results("PEZ Invert Image", results)
        prompts, sims = [r.prompt for r in results], [r.similarity for r in results]
        return io.NodeOutput(prompts, sims, ui=text_ui(prompts, sims))


class StylePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            "PEZ_StylePrompt", "Style Prompt from Images",
            "One prompt for what several images share — their style. Use it with a subject: "
            "Concat Prompts with prompt_1 = 'a tiger' and prompt_2 = this style prompt, then CLIP Text Encode.",
            "Several images sharing a style: a batch, or a list of images of different sizes "
            "(e.g. several Load Image nodes batched, or a list from a folder loader).",
            [
                io.String.Output("prompt", display_name="style_prompt", tooltip=(
                    "One prompt for all images. Combine it with a subject via Concat Prompts "
                    "('a tiger' + ', ' + style).")),
                io.Float.Output("similarity", display_name="similarity",
                                tooltip="Mean CLIP similarity of the prompt to the images."),
            ])

    @classmethod
    def validate_inputs(cls, vocabulary) -> bool | str:
        return check_choices(vocabulary=(vocabulary, pez_core.VOCAB_MODES))

    @classmethod
    def execute(cls, **kw) -> io.NodeOutput:
        [result] = _run(cls, pez_core.style, kw)
        log_results("Style Prompt from Images", [result])
        return io.NodeOutput(result.prompt, result.similarity, ui=text_ui([result.prompt], [result.similarity]))
