"""The documentation site: it builds in strict mode, its examples run, and it covers the API."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import klax

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES_WITH_CODE = sorted((DOCS / "concepts").glob("*.md"))


@pytest.mark.slow
def test_site_builds_in_strict_mode(tmp_path):
  """`mkdocs build --strict`: a broken reference, link, snippet or docstring fails the build."""
  build = subprocess.run(
    [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={"NO_MKDOCS_2_WARNING": "1", "PATH": "", "HOME": str(tmp_path)},
  )
  assert build.returncode == 0, build.stdout + build.stderr
  fitting = (tmp_path / "site" / "reference" / "fitting" / "index.html").read_text()
  assert "gradient_variance_draws" in fitting and "klax.fit_batch" in fitting
  objectives = (tmp_path / "site" / "concepts" / "objectives" / "index.html").read_text()
  # Formulas are MathML in the page itself: no script, no network (offline they still render).
  assert (
    "<math" in objectives and "\\(" not in objectives and 'class="arithmatex"' not in objectives
  )
  for page in (tmp_path / "site").rglob("*.html"):
    text = page.read_text()
    assert "unpkg.com" not in text and "cdn.jsdelivr" not in text, page


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=[p.stem for p in PAGES_WITH_CODE])
def test_concept_page_examples_run(page):
  blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)
  assert blocks, f"{page.name} has no example"
  for block in blocks:
    exec(compile(block, str(page), "exec"), {})


def test_every_public_name_has_a_reference_entry():
  documented = set()
  for page in (DOCS / "reference").glob("*.md"):
    documented |= set(re.findall(r"^::: klax\.(?:families\.)?(\w+)$", page.read_text(), re.M))
  assert set(klax.__all__) - {"families"} <= documented
  public = [getattr(klax.families, n) for n in dir(klax.families) if not n.startswith("_")]
  families = {f.__name__ for f in public if getattr(f, "__module__", None) == "klax.families"}
  assert families <= documented
