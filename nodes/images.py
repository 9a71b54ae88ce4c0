"""PEZ Invert Image (one prompt per image) and Style Prompt from Images (one prompt for them all)."""
from __future__ import annotations

from typing import Any, Callable, ClassVar

from comfy_api.latest import io

from .. import pez_core
from .config import check_choices, make_config
from .progress import LiveProgress, log_results, text_ui
from .schema import (blocklist_input, learning_rate_input, model_input, negative_inputs, node_schema, prompt_length_input,
                     prompt_outputs, readability_inputs, restarts_input, seed_input, steps_input, stopping_inputs, template_input,
                     vocabulary_input)
from .session import device_session
from .values import first, images_of, texts_of


class _ImagePromptNode(io.ComfyNode):
    """What both image nodes share: their inputs (images of different sizes arrive as lists), the
    optimisation and the checks. A subclass says what it is and which pez_core task it runs."""
    NODE_ID: ClassVar[str]
    TITLE: ClassVar[str]
    DESCRIPTION: ClassVar[str]
    IMAGES_TOOLTIP: ClassVar[str]
    TASK: ClassVar[Callable[..., Any]]

    @classmethod
    def outputs(cls) -> list[io.Output]:
        raise NotImplementedError

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            cls.NODE_ID, cls.TITLE, cls.DESCRIPTION,
            [model_input(), io.Image.Input("images", tooltip=cls.IMAGES_TOOLTIP), prompt_length_input(),
             steps_input(), restarts_input(), learning_rate_input(), seed_input(), vocabulary_input(),
             blocklist_input(), *negative_inputs(), *stopping_inputs(), *readability_inputs(), template_input()],
            cls.outputs(), is_input_list=True)

    @classmethod
    def validate_inputs(cls, vocabulary) -> bool | str:
        # one combo here, so ComfyUI names only it; polish is checked by make_config
        return check_choices(vocabulary=(vocabulary, pez_core.VOCAB_MODES))

    @classmethod
    def execute(cls, pez_model: list, images: list, prompt_length: list, steps: list, restarts: list,
                learning_rate: list, seed: list, vocabulary: list, blocklist: list | None = None,
                negative_images: list | None = None, negative_text: list | None = None, polish: list | None = None,
                time_budget: list | None = None, target_similarity: list | None = None,
                readability: list | None = None, fluency: list | None = None,
                template: list | None = None) -> io.NodeOutput:
        model = first(pez_model)
        config = make_config(prompt_length=first(prompt_length), steps=first(steps), seed=first(seed),
                             vocabulary=first(vocabulary), restarts=first(restarts, 0),
                             learning_rate=first(learning_rate), blocklist=first(blocklist, ""),
                             polish=first(polish), time_budget=first(time_budget, 0.0),
                             target_similarity=first(target_similarity, 0.0), readability=first(readability),
                             fluency=first(fluency, 0.0), template=first(template, ""))
        with device_session(model):
            pictures = images_of(images)
            if not pictures:
                raise pez_core.PezError("no images were given; connect an IMAGE (a batch or a list of images)")
            found = cls.TASK(model, pictures, config,
                             negative_images=images_of(negative_images, "negative_images") or None,
                             negative_texts=texts_of(negative_text, "negative_text") or None,
                             callback=LiveProgress(cls.hidden.unique_id, config.steps))
        results = found if isinstance(found, list) else [found]
        log_results(cls.TITLE, results)
        prompts, sims = [r.prompt for r in results], [r.similarity for r in results]
        learned = [r.learned_prompt or r.prompt for r in results]
        outputs = (prompts, sims, learned) if isinstance(found, list) else (prompts[0], sims[0], learned[0])
        return io.NodeOutput(*outputs, ui=text_ui(prompts, sims, results, config.steps))


class InvertImage(_ImagePromptNode):
    NODE_ID, TITLE = "PEZ_InvertImage", "PEZ Invert Image"
    DESCRIPTION = ("Learn a hard text prompt that CLIP matches to the image (PEZ): one prompt per image. "
                   "Connect the prompt to CLIP Text Encode to generate variations of the image.")
    IMAGES_TOOLTIP = ("Images to describe, one prompt each. A batch, or a list of images of different "
                      "sizes; all are optimised together in one run.")
    TASK = staticmethod(pez_core.invert)

    @classmethod
    def outputs(cls) -> list[io.Output]:
        return prompt_outputs(
            "prompt", "The learned prompt, one per image. For a single image it is an ordinary string; for "
            "several, a list: nodes after it (e.g. CLIP Text Encode → KSampler) run once per prompt.",
            "CLIP cosine similarity of each prompt to its image (ordinary image–caption pairs score about 0.3).",
            one_per_image=True)


class StylePrompt(_ImagePromptNode):
    NODE_ID, TITLE = "PEZ_StylePrompt", "Style Prompt from Images"
    DESCRIPTION = ("One prompt for what several images share — their style. Use it with a subject: "
                   "Concat Prompts with prompt_1 = 'a tiger' and prompt_2 = this style prompt, then CLIP Text Encode.")
    IMAGES_TOOLTIP = ("Several images sharing a style: a batch, or a list of images of different sizes "
                      "(e.g. several Load Image nodes batched, or a list from a folder loader).")
    TASK = staticmethod(pez_core.style)

    @classmethod
    def outputs(cls) -> list[io.Output]:
        return prompt_outputs(
            "style_prompt", "One prompt for all images. Combine it with a subject via Concat Prompts "
            "('a tiger' + ', ' + style).", "Mean CLIP similarity of the prompt to the images.")
