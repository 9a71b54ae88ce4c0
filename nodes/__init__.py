"""The PEZ nodes (ComfyUI V3 schema): thin adapters over pez_core."""
from __future__ import annotations

import comfy.model_management as mm
from comfy_api.latest import ComfyExtension, io

from .. import pez_core
from .caption import CaptionFolder
from .combine import CombineModels
from .distill import DistillPrompt
from .images import InvertImage, StylePrompt
from .model import LoadModel
from . import stop  # noqa: F401 - registers the "stop & use best" route
from .text import ConcatPrompts, PromptSimilarity

# pez_core's long loops (tokenizing big texts, downloads, encoding images) see ComfyUI's Cancel
pez_core.set_interrupt_check(mm.throw_exception_if_processing_interrupted)

NODES: list[type[io.ComfyNode]] = [
    LoadModel, InvertImage, DistillPrompt, StylePrompt, ConcatPrompts, PromptSimilarity, CombineModels,
    CaptionFolder,
]


class PezExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
