"""The layers hold: import-linter's contracts (pyproject.toml) and ruff pass, the engine imports neither
open_clip nor transformers, ComfyUI nodes use public pez_core names only, and no function is over 50 lines."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from paths import REPO_ROOT

TOOLS = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    done = _run(str(TOOLS / "lint-imports"), "--no-cache")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_passes():
    done = _run(str(TOOLS / "ruff"), "check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_engine_alone_imports_neither_open_clip_nor_transformers():
    code = ("import sys, pez_core.engine, pez_core.engine.loop, pez_core.engine.polish, pez_core.engine.cuda_graph; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'open_clip', 'transformers', 'huggingface_hub'}))")
    done = _run(sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_language_models_import_no_open_clip():
    done = _run(sys.executable, "-c", "import sys, pez_core.lm; print('open_clip' in sys.modules)")
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stdout + done.stderr


def test_nodes_use_public_pez_core_names_only():
    """``from ..pez_core import X`` or ``pez_core.X``: never a module inside pez_core."""
    import pez_core

    for path in sorted((REPO_ROOT / "nodes").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pez_core."):
                raise AssertionError(f"{path.name}:{node.lineno} imports pez_core.{node.module[9:]}")
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pez_core"):
                assert node.attr in pez_core.__all__, f"{path.name}:{node.lineno} uses pez_core.{node.attr}"


LONGEST_FUNCTION = 50  # lines, decorators and docstring included


def test_no_product_function_is_over_50_lines():
    product = [*(REPO_ROOT / "pez_core").rglob("*.py"), *(REPO_ROOT / "nodes").glob("*.py"), REPO_ROOT / "__init__.py"]
    too_long = []
    for path in product:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if node.end_lineno - first + 1 > LONGEST_FUNCTION:
                    too_long.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name} "
                                    f"({node.end_lineno - first + 1} lines)")
    assert not too_long, too_long
