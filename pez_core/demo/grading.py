"""Grading in the demo world: does a prompt name what the demo world drew?

A prompt is lower-cased and split into whole words (runs of letters). The right colour / shape must appear
as an *exact* whole word; plurals and sub-word pieces do not count (the demo model never saw "circles" or
"redcircle": to it those are other, untrained tokens). "No other shape" is checked strictly: a different
shape word *or its plural* anywhere fails the prompt. Pure Python over ``shapes``; benchmarks/quality.py
and the tests grade with it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from . import shapes

TEMPLATE_WORDS = tuple(sorted({w for t in shapes.TEMPLATES for w in re.findall(r"[a-z]+", re.sub(r"{\w+}", " ", t))}))
WORLD_WORDS = tuple(dict.fromkeys(shapes.WORDS + TEMPLATE_WORDS))  # the word bank: every word of every caption
_PLURAL = {s: s + ("es" if s.endswith(("s", "x", "ch", "sh")) else "s") for s in shapes.SHAPES}
_WORD = re.compile(r"[a-z]+")


def words_of(prompt: str) -> set[str]:
    return set(_WORD.findall(prompt.lower()))


def shape_mentions(words: set[str]) -> set[str]:
    """Shapes named in ``words``, counting plurals (for the 'no other shape' check only)."""
    return {s for s in shapes.SHAPES if s in words or _PLURAL[s] in words}


@dataclass
class Match:
    colour: bool     # right colour as a whole word
    shape: bool      # right shape as a whole word
    recall: bool     # colour and shape, and no other shape (nor its plural)
    strict: bool     # recall, and no colour word but the object's and the background's


def match_single(prompt: str, scene: shapes.Scene) -> Match:
    o, words = scene.objects[0], words_of(prompt)
    colour, shape = o.color in words, o.shape in words
    recall = colour and shape and shape_mentions(words) <= {o.shape}
    strict = recall and (words & set(shapes.COLORS)) <= {o.color, scene.background}
    return Match(colour, shape, recall, strict)


def match_pair(prompt: str, scene: shapes.Scene) -> tuple[bool, bool]:
    """(both objects named: both colours, both shapes, no third shape; the largest object named: recall)."""
    words = words_of(prompt)
    truth_shapes = {o.shape for o in scene.objects}
    both = (all(o.color in words and o.shape in words for o in scene.objects)
            and shape_mentions(words) <= truth_shapes)
    big = scene.objects[0]
    largest = big.color in words and big.shape in words and shape_mentions(words) <= truth_shapes
    return both, largest
