"""The notebooks: each runs top to bottom at its small size, and the committed files stay reviewable."""

import json
import re
import tomllib
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = (
  "kl_basics",
  "forward_vs_reverse",
  "mle_is_forward_kl",
  "elbo_and_vi",
  "kl_estimators_rlhf",
)


def _read(name):
  return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def _repository() -> str:
  with open(ROOT / "pyproject.toml", "rb") as file:
    url = tomllib.load(file)["project"]["urls"]["Repository"]
  return url.removeprefix("https://github.com/")


def test_every_notebook_is_listed():
  assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_reviewable_and_opens_on_colab(name):
  notebook = _read(name)
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert all(not cell.outputs and cell.execution_count is None for cell in code), (
    "commit notebooks without outputs (see the README's Notebooks section)"
  )
  badge = f"colab.research.google.com/github/{_repository()}/blob/main/notebooks/{name}.ipynb"
  assert badge in notebook.cells[0].source
  install = code[0].source
  assert f'REPOSITORY = "https://github.com/{_repository()}"' in install
  assert '"git", "clone"' in install and "print(jax.devices())" in install
  parameters = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
  assert len(parameters) == 1 and re.search(r"^QUICK = True", parameters[0].source, re.M)


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name):
  notebook = _read(name)
  client = nbclient.NotebookClient(
    notebook,
    timeout=600,
    kernel_name="python3",
    resources={"metadata": {"path": str(ROOT / "notebooks")}},
  )
  client.execute()  # Raises CellExecutionError, with the cell and its traceback, on any error.
  images = [
    output
    for cell in notebook.cells
    if cell.cell_type == "code"
    for output in cell.outputs
    if "image/png" in output.get("data", {})
  ]
  assert images, "every notebook shows at least one figure"
  assert not any(
    output.get("name") == "stderr" and "Traceback" in output.get("text", "")
    for cell in notebook.cells
    if cell.cell_type == "code"
    for output in cell.outputs
  )
  json.dumps(nbformat.writes(notebook))  # The executed notebook serialises.
