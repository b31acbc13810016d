r"""MkDocs hook: the site's TeX formulas become MathML at build time.

Formulas then need no script and no network: current browsers render MathML natively.
pymdownx.arithmatex (generic mode) marks each formula as `<span class="arithmatex">\(…\)</span>`
or `<div class="arithmatex">\[…\]</div>`; this hook converts the TeX inside with latex2mathml.
A formula it cannot convert fails the build (mkdocs runs in strict mode).
"""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.DOTALL)
_BLOCK = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.DOTALL)


def _mathml(tex: str, display: str) -> str:
  try:
    return convert(html.unescape(tex).strip(), display=display)
  except Exception as error:  # latex2mathml raises its own exception types.
    raise ValueError(f"cannot convert the formula {tex!r} to MathML: {error}") from error


def on_page_content(html_text: str, **kwargs) -> str:
  """Replaces arithmatex's TeX spans and divs by MathML."""
  html_text = _BLOCK.sub(
    lambda m: f'<div class="math">{_mathml(m.group(1), "block")}</div>', html_text
  )
  return _INLINE.sub(lambda m: _mathml(m.group(1), "inline"), html_text)
