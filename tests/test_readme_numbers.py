"""scripts/check_readme_numbers.py: every number quoted in the recipe READMEs' results text (and README.md's
recipe section) recomputes from the committed results JSON, and the check fails on a doctored copy."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_readme_numbers", ROOT / "scripts" / "check_readme_numbers.py")
checker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(checker)


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """A copy of the READMEs and results the checker reads."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(ROOT / "results", root / "results", ignore=shutil.ignore_patterns("*.png"))
    shutil.copy(ROOT / "README.md", root / "README.md")
    for readme in ROOT.glob("recipes/*/README.md"):
        (root / readme.parent.relative_to(ROOT)).mkdir(parents=True, exist_ok=True)
        shutil.copy(readme, root / readme.relative_to(ROOT))
    return root


def test_committed_readmes_recompute():
    assert checker.check(ROOT) == []


def test_welch_by_hand():
    # a = [1,2,3], b = [4,5,6]: sample variances 1, se^2 = 1/3 + 1/3, t = -3 / sqrt(2/3) = -3.6742, df = 4;
    # two-sided p at |t| = 3.6742 with 4 df: 0.02131 (t tables: 0.01 < p/2 ... p between 0.02 and 0.05)
    t, p = checker._welch([1, 2, 3], [4, 5, 6])
    assert t == pytest.approx(-3.6742, abs=1e-4) and p == pytest.approx(0.02131, abs=2e-4)
    # APR vs SoS+ after RL at W = 768 (results/apr): t 2.29, p 0.087
    t, p = checker._welch([75, 82, 81], [73, 66, 75])
    assert t == pytest.approx(2.2883, abs=1e-3) and p == pytest.approx(0.0872, abs=1e-3)


def test_number_extraction_skips_code_dates_and_keeps_signs():
    assert checker.quoted_numbers("2026-12-03 `--steps 40` mean 0.577 on 5 of 240, −0.30, 1,280 s0 v2.5") == [
        "0.577", "5", "240", "−0.30", "1280"]


def test_a_doctored_readme_number_is_reported(copy):
    readme = copy / "recipes/oblr_po/README.md"
    text = readme.read_text()
    assert "0.136" in text
    readme.write_text(text.replace("0.136", "0.147", 1))
    try:
        problems = checker.check(copy)
    finally:
        readme.write_text(text)
    assert any("recipes/oblr_po/README.md" in p and ": 0.147 is not recomputed" in p for p in problems), problems


def test_doctored_results_are_reported(copy):
    path = copy / "results/oblr_po/runs.json"
    raw = path.read_text()
    data = json.loads(raw)
    for run in data["runs"]:                     # the LR multiplier never at its floor any more
        if run["method"] == "OBLR-PO":
            run["trace"]["oblr/lr_scale"] = [max(v, 0.06) for v in run["trace"]["oblr/lr_scale"]]
            run["final"] = run["curve"][-1][1] = run["final"] + 0.1
    path.write_text(json.dumps(data))
    try:
        problems = checker.check(copy)
    finally:
        path.write_text(raw)
    assert "results/oblr_po/table.md differs from the table rebuilt from its JSON" in problems
    readme_problems = [p for p in problems if p.startswith("recipes/oblr_po/README.md")]
    assert any(": 0.221 is not recomputed" in p for p in readme_problems), readme_problems   # OBLR-PO's final mean
