"""PEZ Hard Prompts for ComfyUI: learn hard text prompts from images and texts (pez_core).

ComfyUI loads this package and calls ``comfy_entrypoint`` (V3 node API). The node module is
imported lazily inside it, so importing this package without ComfyUI (pytest, tools) never fails.
The ``web/`` folder is registered by ComfyUI from ``[tool.comfy] web`` in pyproject.toml.
"""


async def comfy_entrypoint():
    from .nodes import PezExtension

    return PezExtension()
