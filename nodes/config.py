"""Widget values to a checked ``PezConfig``, and the combo checks ComfyUI leaves to nodes."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import pez_core
from .schema import DEFAULTS, READABILITY


def make_config(*, prompt_length: int, steps: int, seed: int, vocabulary: str, restarts: int = 0,
                learning_rate: float = DEFAULTS.lr, blocklist: str | None = "", polish: str | None = None,
                time_budget: float | None = 0.0, target_similarity: float | None = 0.0,
                readability: str | None = None, fluency: float | None = 0.0,
                template: str | None = None) -> pez_core.PezConfig:
    """The widgets' values as a PezConfig (0 restarts: the engine's choice for the device; a time budget or
    target of 0: none; readability auto: the model's default, on: ``fluency`` or else READABLE_FLUENCY),
    checked at once: ComfyUI does not apply a widget's min/max to a linked value, so this is where e.g. 3000
    restarts stop."""
    polish, readability = polish or DEFAULTS.polish, readability or "auto"
    check_choice("polish", polish, pez_core.POLISH_MODES)
    check_choice("readability", readability, READABILITY)
    weight = {"auto": None, "off": 0.0, "on": fluency or pez_core.READABLE_FLUENCY}[readability]
    config = pez_core.PezConfig(
        prompt_len=prompt_length, steps=steps, restarts=restarts or None, lr=learning_rate, seed=seed,
        vocab=vocabulary, blocklist=pez_core.check_text(blocklist or "", "blocklist").strip() or None, polish=polish,
        time_budget=time_budget or None, target_similarity=target_similarity or None, fluency=weight,
        template=pez_core.check_text(template or "", "template").strip() or DEFAULTS.template)
    config.validate()
    return config


def check_choice(name: str, value: Any, options: Sequence[str]) -> None:
    """In execute, for a second combo of a node. Workaround (ComfyUI 0.3.75): it reports a validate_inputs
    failure against every input the function takes, so each node validates one combo there, the rest here."""
    if value not in options:
        raise pez_core.PezError(f"{name} {value!r} is not one of: {', '.join(map(str, options))}")


def check_choices(**checks: tuple[Any, Sequence[str]]) -> bool | str:
    """validate_inputs helper. Workaround (ComfyUI 0.3.75): it does not check V3 combo values itself.
    ``name=(value, options)``; a value may be a list (list inputs) and is None when linked. True, or what is
    wrong."""
    for name, (value, options) in checks.items():
        for v in value if isinstance(value, list) else [value]:
            if v is not None and v not in options:
                return f"{name} {v!r} is not one of: {', '.join(map(str, options))}"
    return True
