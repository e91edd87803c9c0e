"""recipes/ is a folder of copy-and-edit recipes, never a package (torchtune style)."""
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_importing_recipes_raises(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop("recipes", None)
    with pytest.raises(ModuleNotFoundError, match="recipes/ is not a package: copy a recipe"):
        importlib.import_module("recipes")


def test_library_never_imports_recipes():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "rlpost").rglob("*.py")
                 if "import recipes" in p.read_text() or "from recipes" in p.read_text()]
    assert offenders == []
