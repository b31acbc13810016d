"""The README's tour runs as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_python_blocks_run():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
  assert blocks
  for block in blocks:
    exec(compile(block, str(README), "exec"), {})


def test_readme_gives_exactly_two_setup_commands_and_ci_runs_the_test_one():
  text = README.read_text()
  commands = re.findall(r"```bash\n(.*?)\n```", text, flags=re.DOTALL)
  assert len(commands) == 2
  test_command = commands[1].split("&& ")[-1].strip()
  assert test_command in (README.parent / ".ci" / "run").read_text()
  assert "pip install klax" not in text.replace("pip install klax-", "")
