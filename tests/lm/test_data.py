"""Task data for LMs (pez_core.lm.data): CSV and JSON-lines files, their errors, few-shot draws."""
from __future__ import annotations

import pytest

from pez_core import PezError
from pez_core.lm.data import Example, few_shot, load_examples


@pytest.mark.parametrize("name,content,message", [
    ("a.csv", "words,label\nhi,positive\n", "lacks column"),
    ("b.jsonl", '{"text": "hi", "label": "positive"}\n{"text": "ok", "label": "neutral"}\n', "line 2: label 'neutral'"),
    ("c.jsonl", '{"text": "  ", "label": "positive"}\n', "line 1: the text is empty"),
    ("d.jsonl", '{"text": "hi", "label": "positive"}\nnot json\n', "line 2: not a JSON object"),
    ("e.jsonl", '{"label": "positive"}\n', "line 1: missing text"),
    ("f.csv", "text,label\n", "holds no examples"),
    ("g.jsonl", "[1, 2]\n", "expected a JSON object"),
    ("h.csv", "text,label\nfine,positive\n,negative\n", "line 3: the text is empty"),
])
def test_bad_data_files_name_the_problem(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PezError, match=message) as error:
        load_examples(path, ["positive", "negative"])
    assert name in str(error.value)


def test_data_files_and_few_shot(tmp_path):
    (tmp_path / "d.csv").write_text('text,label\n"good, very",positive\nbad,negative\nfine,positive\n')
    (tmp_path / "d.jsonl").write_text('{"text": "good, very", "label": "positive"}\n\n'
                                      '{"text": "bad", "label": "negative"}\n')
    csv_rows = load_examples(tmp_path / "d.csv", ["positive", "negative"])
    assert csv_rows[0] == Example("good, very", "positive") and len(csv_rows) == 3
    assert load_examples(tmp_path / "d.jsonl", ["positive", "negative"]) == csv_rows[:2]
    with pytest.raises(PezError, match="not found"):
        load_examples(tmp_path / "missing.jsonl", ["positive"])
    shots = few_shot(csv_rows, 1, seed=0)
    assert sorted(e.label for e in shots) == ["negative", "positive"]
    with pytest.raises(PezError, match="'negative' has 1"):
        few_shot(csv_rows, 2)
