"""PEZ Distill Prompt: a shorter prompt with the meaning of a long one."""
from __future__ import annotations

from comfy_api.latest import io

from .. import pez_core
from .config import check_choice, check_choices, make_config
from .progress import LiveProgress, log_results, text_ui
from .schema import (model_input, node_schema, prompt_length_input, prompt_outputs, readability_inputs, seed_input,
                     steps_input, stopping_inputs, template_input, text_input, vocabulary_input)
from .session import device_session
from .values import require_tokens

TARGETS = ("length", "0.7", "0.5", "0.3", "0.1")


class DistillPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "PEZ_DistillPrompt", "PEZ Distill Prompt",
            description="Distill a long prompt into a shorter one that CLIP reads the same way (PEZ). "
                        "Prompts longer than CLIP's 75 tokens are fine: they are read in 75-token chunks.",
            inputs=[
                model_input(),
                text_input("text", "The prompt to shorten. Any length; past 75 CLIP tokens it is encoded in "
                           "chunks, as ComfyUI's CLIP Text Encode does."),
                io.Combo.Input("target", options=list(TARGETS), default="0.5", tooltip=(
                    "How short: 'length' uses the length widget; a number keeps that share of the text's CLIP "
                    "tokens (0.5 = half as many, at least 1, at most 75).")),
                prompt_length_input("Length of the distilled prompt in CLIP tokens (1–75); used when "
                                    "target is 'length'."),
                steps_input(),
                seed_input(),
                vocabulary_input(),
                *stopping_inputs(),
                *readability_inputs(),
                template_input(),
            ],
            outputs=prompt_outputs("prompt", "The distilled prompt.",
                                   "CLIP cosine similarity of the distilled prompt to the original text."),
        )

    @classmethod
    def validate_inputs(cls, vocabulary) -> bool | str:
        # one combo here, so ComfyUI names only it; target and polish are checked in execute
        return check_choices(vocabulary=(vocabulary, pez_core.VOCAB_MODES))

    @classmethod
    def execute(cls, pez_model: pez_core.PezModel, text: str, target: str, prompt_length: int, steps: int,
                seed: int, vocabulary: str, polish: str | None = None, time_budget: float = 0.0,
                target_similarity: float = 0.0, readability: str | None = None, fluency: float = 0.0,
                template: str = "") -> io.NodeOutput:
        check_choice("target", target, TARGETS)
        if not pez_core.check_text(text, "text").strip():
            raise pez_core.PezError("the text to distill is empty; type or connect a prompt")
        require_tokens(text, "the text to distill")
        ratio = None if target == "length" else float(target)
        config = make_config(prompt_length=prompt_length, steps=steps, seed=seed, vocabulary=vocabulary,
                             polish=polish, time_budget=time_budget, target_similarity=target_similarity,
                             readability=readability, fluency=fluency, template=template)
        with device_session(pez_model):
            result = pez_core.distill(pez_model, text, config, ratio=ratio,
                                      callback=LiveProgress(cls.hidden.unique_id, config.steps))
        log_results("PEZ Distill Prompt", [result])
        ui = text_ui([result.prompt], [result.similarity], [result], config.steps)
        return io.NodeOutput(result.prompt, result.similarity, result.learned_prompt or result.prompt, ui=ui)
