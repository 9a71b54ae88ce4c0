"""Task data for language-model prompts: labelled examples from CSV or JSONL, verbalizers, few-shot samples.

A data file holds one example per row: a ``text`` and a ``label`` (CSV columns or JSON keys). Every
label must be one of the verbalizer's; errors name the file and the line at fault.
"""
from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..common.errors import PezError

COLUMNS = ("text", "label")


@dataclass(frozen=True)
class Example:
    text: str
    label: str


def parse_verbalizer(spec: str | Mapping[str, str | Sequence[str]]) -> dict[str, list[str]]:
    """Label → words, from ``"positive:great|good,negative:terrible"`` or a mapping.

    Each label needs at least one word; a label scores the log-sum-exp of its words' first tokens."""
    if isinstance(spec, str):
        pairs = []
        for item in (part.strip() for part in spec.split(",")):
            label, colon, words = item.partition(":")
            if not item or not colon or not label.strip():
                raise PezError(f"verbalizer entry {item!r} must read label:word (several words as word|word), "
                               "e.g. 'positive:great,negative:terrible'")
            pairs.append((label.strip(), words.split("|")))
    else:
        pairs = [(str(label), [words] if isinstance(words, str) else list(words)) for label, words in spec.items()]
    verbalizer: dict[str, list[str]] = {}
    for label, words in pairs:
        words = [w.strip() for w in words if w and w.strip()]
        if not words:
            raise PezError(f"verbalizer label {label!r} has no words")
        if label in verbalizer:
            raise PezError(f"verbalizer label {label!r} appears twice")
        verbalizer[label] = words
    if len(verbalizer) < 2:
        raise PezError("a verbalizer needs at least two labels, e.g. 'positive:great,negative:terrible'")
    return verbalizer


def load_examples(path: str | Path, labels: Iterable[str]) -> list[Example]:
    """The examples of a CSV (header with ``text`` and ``label``) or JSONL file (one object per line).

    Files ending in ``.csv`` are read as CSV, everything else as JSONL."""
    path = Path(path)
    labels = list(labels)
    if path.is_dir():
        raise PezError(f"data file {path} is a directory; give a .csv or .jsonl file")
    if not path.is_file():
        raise PezError(f"data file not found: {path}")
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise PezError(f"cannot read data file {path}: {e}") from e
    rows = _csv_rows(path, raw) if path.suffix.lower() == ".csv" else _jsonl_rows(path, raw)
    examples = [_example(path, line, row, labels) for line, row in rows]
    if not examples:
        raise PezError(f"data file {path} holds no examples; it needs rows with {' and '.join(COLUMNS)}")
    return examples


def _csv_rows(path: Path, raw: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(raw.splitlines())
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise PezError(f"{path}: the CSV header lacks column(s) {', '.join(missing)} "
                       f"(found {', '.join(reader.fieldnames or []) or 'no header'})")
    return [(reader.line_num, row) for row in reader]


def _jsonl_rows(path: Path, raw: str) -> list[tuple[int, dict]]:
    rows = []
    for line, content in enumerate(raw.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            row = json.loads(content)
        except json.JSONDecodeError as e:
            raise PezError(f"{path} line {line}: not a JSON object ({e.msg}); a .csv name reads the file as CSV") from e
        if not isinstance(row, dict):
            raise PezError(f"{path} line {line}: expected a JSON object with {' and '.join(COLUMNS)}")
        rows.append((line, row))
    return rows


def _example(path: Path, line: int, row: dict, labels: list[str]) -> Example:
    missing = [c for c in COLUMNS if c not in row or row[c] is None]
    if missing:
        raise PezError(f"{path} line {line}: missing {', '.join(missing)}")
    text, label = str(row["text"]).strip(), str(row["label"]).strip()
    if not text:
        raise PezError(f"{path} line {line}: the text is empty")
    if label not in labels:
        raise PezError(f"{path} line {line}: label {label!r} is not in the verbalizer ({', '.join(labels)}); "
                       "add it to --verbalizer or fix the row")
    return Example(text, label)


def few_shot(examples: Sequence[Example], k: int, seed: int = 0) -> list[Example]:
    """``k`` examples of every label, drawn with ``seed``, in a seeded order."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise PezError(f"examples per label must be a positive integer, got {k!r}")
    rng = random.Random(seed)
    by_label: dict[str, list[Example]] = {}
    for example in examples:
        by_label.setdefault(example.label, []).append(example)
    short = {label: len(rows) for label, rows in by_label.items() if len(rows) < k}
    if short:
        raise PezError(f"too few training examples for {k} per label: " +
                       ", ".join(f"{label!r} has {n}" for label, n in short.items()))
    chosen = [e for label in sorted(by_label) for e in rng.sample(by_label[label], k)]
    rng.shuffle(chosen)
    return chosen
