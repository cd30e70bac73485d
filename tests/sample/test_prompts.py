"""read_prompts: the --prompts_file format (one plain-text prompt per UTF-8 line)."""
from __future__ import annotations

import re

import pytest

from llmimg_jax.sample import read_prompts


def test_prompts_file_lines_are_kept_whole_and_must_be_utf8(tmp_path):
  """Only lines starting with '#' are comments: a '#' inside a prompt is text. Bytes that are
  not UTF-8 are refused, not replaced."""
  path = tmp_path / "prompts.txt"
  path.write_text("# a comment\na #1 fan, red # blue\n#another\n")
  assert read_prompts([], path) == ["a #1 fan, red # blue"]
  latin1 = tmp_path / "latin1.txt"
  latin1.write_bytes(b"caf\xe9\n")
  with pytest.raises(ValueError, match=re.escape(f"Could not read prompts file {latin1} (") +
                     ".*it must be UTF-8 text"):
    read_prompts([], latin1)


def test_a_bom_opening_any_line_is_dropped(tmp_path):
  """Files that each start with a BOM, concatenated: the second file's comment was a prompt
  ('\ufeff# second file'), and its BOM-only line an empty-looking one."""
  bom = "\ufeff"
  joined = tmp_path / "joined.txt"
  joined.write_text(f"{bom}# first\r\na red circle\r\n{bom}# second\r\n{bom}\r\n"
                    f"  {bom}a blue square\r\n", encoding="utf-8")
  assert read_prompts([], joined) == ["a red circle", "a blue square"]
  inner = tmp_path / "inner.txt"  # a U+FEFF inside a prompt is the prompt's own text
  inner.write_text(f"a{bom}b\n", encoding="utf-8")
  assert read_prompts([], inner) == [f"a{bom}b"]


def test_a_prompts_file_of_json_lines_is_refused(tmp_path):
  """A captions.jsonl given as --prompts_file sampled each raw JSON line as a prompt."""
  jsonl = tmp_path / "captions.jsonl"
  jsonl.write_text('{"file": "a.png", "caption": "a red circle"}\n')
  with pytest.raises(ValueError, match=re.escape(
      f"Prompts file {jsonl} holds JSON objects (e.g. '{{\"file\": \"a.png\", \"caption\": "
      "\"a red circle\"}'), not plain prompts; write one prompt per line (from a captions.jsonl: "
      "`jq -r .caption captions.jsonl > prompts.txt`).")):
    read_prompts([], jsonl)
  # Braces in a prompt that is not a JSON object are text.
  text = tmp_path / "prompts.txt"
  text.write_text("{a red} circle\n{}x\n")
  assert read_prompts([], text) == ["{a red} circle", "{}x"]


def test_a_blank_prompts_file_name_is_refused():
  """--prompts_file '' (an unset "$FILE") was skipped: the --prompt prompts alone were sampled."""
  for name in ("", " "):
    with pytest.raises(ValueError, match=re.escape(f"The prompts file name is blank "
                                                   f"(--prompts_file={name!r}); name a UTF-8")):
      read_prompts(["a cat"], name)
  assert read_prompts(["a cat"], None) == ["a cat"]
