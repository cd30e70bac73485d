"""The README's Python use of the T5, run on a tiny checkpoint in place of FLAN-T5."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_s_t5_snippet_runs(relu_tied):
  section = README.read_text().split("## The T5 text model", 1)[1].split("\n## ", 1)[0]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  assert '"google/flan-t5-small"' in code
  scope = {}
  exec(code.replace('"google/flan-t5-small"', repr(relu_tied.path)), scope)  # noqa: S102
  texts, states = scope["texts"], scope["states"]
  assert isinstance(texts, list) and len(texts) == 1 and isinstance(texts[0], str)
  assert states.shape == (1, 64, scope["t5"].config.d_model) and states.dtype == "float32"
