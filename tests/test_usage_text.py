r"""The usage text a command prints (its module docstring: evaluate.py's on a usage error, prepare's
--help) shows its example commands as written, `\` line continuations included: a non-raw
docstring joined each continued line to the next with a run of spaces."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["evaluate.py", "llmimg_jax/data/prepare.py", "sample.py",
                                    "train.py"])
def test_the_usage_docstring_reads_as_written(script):
  source = (ROOT / script).read_text()
  node = ast.parse(source).body[0].value
  written = ast.get_source_segment(source, node).lstrip("rR")[3:-3]
  assert node.value == written, f"{script}: make its docstring raw (r-prefixed) or drop escapes"


def test_prepare_help_keeps_the_continued_example(capsys):
  from llmimg_jax.data import prepare
  with pytest.raises(SystemExit):
    prepare.main(["--help"])
  out = capsys.readouterr().out
  assert "--data_dir ~/tensorflow_datasets \\\n      --preview shapes.png" in out, out
