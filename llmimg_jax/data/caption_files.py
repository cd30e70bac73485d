"""Caption files of a captioned folder: captions.jsonl and/or captions.csv -> {file: [captions]}.

captions.jsonl has one JSON object per line, e.g. `{"file": "cat.jpg", "caption": "a cat"}` or
`{"file_name": "cat.jpg", "captions": ["a cat", "a grey cat"]}`; several lines for one file (and
every caption key of a line) are merged, each caption once. captions.csv has a header with a file
column (file/file_name/filename/image, any case) and a caption column (caption/text/captions); a
caption column that comes last may hold unquoted commas (counted as a note), and a cell holding a
list of captions, in JSON or as pandas writes a list (`['a cat', 'a dog']`, or numpy's
`['a cat' 'a dog']` for an array), is those. File names
are relative to the folder (or absolute paths inside it; `sub\\a.jpg`, as written on Windows, is
`sub/a.jpg`) and match the names on disk after Unicode NFC normalisation (macOS may write
`café.png` decomposed, as NFD), and up to case where the disk finds names so (macOS's and
Windows': `Cat.JPG` is cat.jpg). Bad lines are skipped and counted by reason.
"""
from __future__ import annotations

import ast
import collections
import csv
import io
import json
import os
import re
import tokenize
from collections.abc import Iterable, Iterator

from llmimg_jax import output_files
from llmimg_jax.data.folder_names import (DiskNames, FolderError, closed_folder, names_in,
                                          relative_name)

FILE_KEYS = ("file", "file_name", "filename", "image")
CAPTION_KEYS = ("caption", "captions", "text")
CAPTION_FILES = ("captions.jsonl", "captions.csv")
MAX_EXAMPLES_PER_REASON = 5
# Builds record the version of this reader (captioned_folder.warn_if_changed flags older ones).
# What each version reads otherwise than the one before; so far captions.csv only.
READER_VERSION = 3
READER_CHANGES = {
    2: "a cell holding a list of captions (['a cat', 'a dog']) is now those captions, and a "
       "quote left open is skipped instead of taking the lines after it into its caption",
    3: "numpy's list cells (['a cat' 'a dog']) are now two captions, not 'a cata dog', and a "
       "quote left open is skipped when the next line names the same file too",
}


class Skips:
  """Skip counts by reason, with a few examples of each."""

  def __init__(self):
    self.counts = collections.Counter()
    self.examples = collections.defaultdict(list)

  def add(self, reason: str, what: str) -> None:
    self.counts[reason] += 1
    if len(self.examples[reason]) < MAX_EXAMPLES_PER_REASON:
      self.examples[reason].append(what)


def _add_caption_entry(names: DiskNames, where, file_name, captions, out, skips,
                       blank: str = "empty_caption") -> None:
  """Adds `captions` of `file_name` to `out`, or a skip; `blank`: the reason when none is text."""
  if not isinstance(file_name, str) or not file_name.strip():
    skips.add("missing_key", where)
    return
  if isinstance(captions, str):
    captions = [captions]
  if not isinstance(captions, list):
    skips.add("missing_key", where)
    return
  # Undecodable CSV bytes (surrogate-escaped) or a JSON "\ud83d" escape (half an emoji): not
  # UTF-8, so TFDS could not write them.
  if not all(output_files.is_utf8(v) for v in (file_name, *captions) if isinstance(v, str)):
    skips.add("invalid_utf8", where)
    return
  if "\0" in file_name:  # a JSON "\u0000" or a NUL byte in a CSV cell: os calls raise on it
    skips.add("unknown_file", f"{where} ({file_name!r})")
    return
  # As written first: a file may begin or end with a space (' dog.png'); stripped (a cell's
  # padding) only where no file has the name as written.
  name = file_name
  rel, written = _disk_file(names, name, where)
  if rel is None and name != name.strip():
    name = name.strip()
    rel, written = _disk_file(names, name, where)
  if written is None:
    inside = names.by_its_end(name) if os.path.isabs(name) else None
    skips.add("outside_folder", f"{where} ({file_name}" +
              (f"; in the folder: {inside})" if inside else ")"))
    return
  if rel is None and (closed := closed_folder(names.folder, written)):
    skips.add("closed_folder", f"{where} ({file_name}; {closed})")
    return
  if rel is None:
    # Written on a disk that ignores case (a Mac's), read on one that does not (Linux's)?
    other = names.in_other_case(written)
    skips.add("unknown_file", f"{where} ({file_name}" +
              (f"; on disk: {other}, in other case)" if other else ")"))
    return
  named = out[rel]  # named even if this line's captions are blank: not also "no_caption"
  captions = [c.strip() for c in captions if isinstance(c, str) and c.strip()]
  if not captions:
    skips.add(blank, where)
    return
  named.update(dict.fromkeys(captions))  # each once, in order (a list's `in`: 58 s for 100k)


def _disk_file(names: DiskNames, name: str, where: str) -> tuple[str | None, str | None]:
  """(the folder's file that the captions' file name `name` names, as spelled on disk; `name`
  relative to the folder), each None if there is none (a name outside the folder: both)."""
  rel = relative_name(names.folder, name)
  if rel is None:
    return None, None
  written, rel = rel, names.resolve(rel, where)
  if rel is None and "\\" in name:  # written on Windows, sub\a.jpg: its folders' separator
    windows = relative_name(names.folder, name.replace("\\", "/"))
    rel = windows and names.resolve(windows, where)
    written = windows or written
  return rel, written


def _first(obj: dict, keys) -> object:
  return next((obj[k] for k in keys if k in obj), None)


def check_caption_files(folder: str) -> None:
  """What can be refused without reading the images: raises FolderError (seconds, not a build)."""
  paths = [os.path.join(folder, f) for f in CAPTION_FILES]
  if not any(os.path.isfile(p) for p in paths):
    entries = names_in(folder)
    # Named on a disk that ignores case (a Mac's: Captions.csv), read where case matters.
    if here := [f for f in CAPTION_FILES if f in entries]:  # a link to nothing, a folder
      path = os.path.join(folder, here[0])
      what = (f"a link to {os.readlink(path)}, which is no file" if os.path.islink(path) else
              "not a file")
      raise FolderError(f"{path} is {what}: make it the captions file itself (or a link to it).")
    other = [f for f in entries if f.casefold() in CAPTION_FILES]
    # A Hugging Face imagefolder's captions: its file_name and text keys are read here too.
    hf = [f for f in entries if f in ("metadata.jsonl", "metadata.csv")]
    hint = "."
    if other:
      hint = f"; rename {other[0]} to {other[0].lower()} (case matters on this disk)."
    elif hf:
      hint = (f"; rename {hf[0]} (a Hugging Face imagefolder's) to "
              f"{hf[0].replace('metadata', 'captions')}: its file_name and text fields are read.")
    raise FolderError(
        f"No captions file in {folder}: add captions.jsonl (one JSON object per line, e.g. "
        '{"file": "a.jpg", "caption": "..."}) or captions.csv (columns file,caption)' + hint)
  for path in paths:
    _refuse_utf16(path)
  if os.path.isfile(paths[0]):
    _refuse_json_array(paths[0])
  if os.path.isfile(paths[1]):  # its header record (a quoted cell may hold a line break)
    with open(paths[1], encoding="utf-8", errors="surrogateescape", newline="") as f:
      _csv_columns(paths[1], f.read(1 << 16))


def _refuse_json_array(jsonl_path: str) -> None:
  """One JSON array of objects (what `json.dump(list)` writes) is not JSON Lines: say so."""
  with open(jsonl_path, "rb") as f:
    if not f.read(1 << 16).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
      return
    f.seek(0)
    try:
      obj = json.loads(f.read().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
      return  # a line-by-line problem; the build counts it
  if isinstance(obj, list):
    raise FolderError(
        f"{jsonl_path} is one JSON array; captions.jsonl needs one JSON object per line "
        "(JSON Lines), e.g. write it with `for e in entries: f.write(json.dumps(e) + '\\n')`.")


def _without_boms(text: str) -> str:
  """`text` without the byte-order marks that begin its lines: one at its start, as some editors
  write, and more where files were joined (`cat a.csv b.csv`): '\ufeffb.jpg' named no file."""
  return re.sub("(?:^|(?<=[\r\n]))\ufeff+", "", text)


def _csv_columns(csv_path: str, text: str | Iterable[str]
                 ) -> tuple[csv.DictReader, str, str]:
  """The reader of a captions.csv's text (or its lines) and its file and caption columns. A cell
  written after a space, `a.jpg, "a cat, sitting"`, is read as quoted (skipinitialspace): by
  default csv keeps its quotes and splits it at its commas."""
  lines = io.StringIO(_without_boms(text), newline="") if isinstance(text, str) else text
  reader = csv.DictReader(lines, skipinitialspace=True)
  fields = reader.fieldnames or []
  by_name: dict[str, str] = {}  # "File Name " reads as file_name; the first such column wins
  for f in fields:
    by_name.setdefault(f.strip().lower().replace(" ", "_"), f)
  file_col = next((by_name[k] for k in FILE_KEYS if k in by_name), None)
  cap_col = next((by_name[k] for k in CAPTION_KEYS if k in by_name), None)
  if file_col is None or cap_col is None:
    raise FolderError(f"{csv_path}: header {fields} needs a file column (one of {FILE_KEYS}) "
                      f"and a caption column (one of {CAPTION_KEYS}).{_delimiter_hint(fields)}")
  return reader, file_col, cap_col


_OTHER_DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "bars"}


def _delimiter_hint(fields: list[str]) -> str:
  """For a one-column header split by another delimiter (a European Excel's ';', a TSV's tab):
  what to change. Empty otherwise."""
  if len(fields) != 1:
    return ""
  for delimiter, name in _OTHER_DELIMITERS.items():
    cells = [c.strip().lower().replace(" ", "_") for c in fields[0].split(delimiter)]
    if any(c in FILE_KEYS for c in cells) and any(c in CAPTION_KEYS for c in cells):
      return (f" Its columns are separated by {name}; captions.csv needs commas (save it as "
              "\"CSV UTF-8 (Comma delimited)\", or write it with Python's csv module).")
  return ""


def read_captions(folder: str, skips: Skips, notes: Skips | None = None
                  ) -> dict[str, list[str]]:
  """File name (relative to `folder`) -> captions, from captions.jsonl and/or captions.csv.

  Each caption once per file; a file named only with blank captions maps to []."""
  out: dict[str, dict[str, None]] = collections.defaultdict(dict)  # file -> its captions
  check_caption_files(folder)
  names = DiskNames(folder)
  jsonl, csv_path = [os.path.join(folder, f) for f in CAPTION_FILES]
  if os.path.isfile(jsonl):
    with open(jsonl, "rb") as f:  # lines end in \n, \r\n or (old Macs) \r, as captions.csv's
      for n, raw in enumerate(f.read().splitlines(), start=1):
        where = f"captions.jsonl:{n}"
        if not raw.strip():
          continue
        try:
          line = raw.decode("utf-8-sig")  # a BOM: some editors write one, `cat a b` two
        except UnicodeDecodeError:
          skips.add("invalid_utf8", where)
          continue
        try:
          obj = json.loads(line)
        except json.JSONDecodeError:
          skips.add("invalid_json", where)
          continue
        if not isinstance(obj, dict):
          skips.add("invalid_json", where)
          continue
        file_name = _first(obj, FILE_KEYS)
        values = [  # every caption key's (_add_caption_entry keeps each caption once)
            c for k in CAPTION_KEYS if k in obj
            for c in (obj[k] if isinstance(obj[k], list) else [obj[k]])]
        captions = [c for c in values if isinstance(c, str)]
        if file_name is None or not any(k in obj for k in CAPTION_KEYS):
          skips.add("missing_key", where)
          continue
        # e.g. "caption": 3 (a class id): not a blank caption, a value that is not text
        blank = ("caption_not_text" if any(v is not None and not isinstance(v, str)
                                           for v in values) else "empty_caption")
        _add_caption_entry(names, where, file_name, captions, out, skips, blank)
  if os.path.isfile(csv_path):
    with open(csv_path, "rb") as f:
      text = f.read().decode("utf-8", errors="surrogateescape")
    record: list[str] = []  # the lines read since the last record
    reader, file_col, cap_col = _csv_columns(csv_path, _kept(
        io.StringIO(_without_boms(text), newline=""), record))
    record.clear()  # the header's
    last = reader.fieldnames[-1] == cap_col
    file_index = reader.fieldnames.index(file_col)
    for row, lines, start in _rows(reader, record, csv_path):
      where = f"captions.csv:{reader.line_num}"  # the record's last line (quotes may span lines)
      if len(lines) > 1 and _reads_other_records(names, lines, file_index, len(reader.fieldnames),
                                                 row.get(file_col) or "", where):
        skips.add("unclosed_csv_quote", f"captions.csv:{start}-{reader.line_num}")
        continue
      caption, extra = row.get(cap_col) or "", row.get(None)
      if extra:  # more cells than the header: an unquoted comma
        if not last:  # which cells are the caption's is unknown
          skips.add("extra_csv_cells", where)
          continue
        # The caption is the last column: its own commas, with the spaces after them.
        cells = [row[f] or "" for f in reader.fieldnames] + extra
        caption = _unquoted_caption(lines, cells, 1 + len(extra))
        if notes is not None:
          notes.add("unquoted_csv_comma", where)
      listed = _listed_captions(caption)
      _add_caption_entry(names, where, row.get(file_col), caption if listed is None else listed,
                         out, skips)
  return {rel: list(captions) for rel, captions in out.items()}


def _listed_captions(cell: str) -> list[str] | None:
  """The captions of a captions.csv cell holding a list of them, in JSON (`["a cat", "a dog"]`)
  or as pandas writes a list column (Python's repr, `['a cat', "a dog's toy"]`, or numpy's
  str of an array, `['a cat' 'a dog']`, which literal_eval would join into one); None for any
  other cell."""
  text = cell.strip()
  if not (text.startswith("[") and text.endswith("]")):
    return None
  try:
    value = json.loads(text)
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None
  except (ValueError, RecursionError):
    pass
  try:
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
              if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER)]
  except (tokenize.TokenError, SyntaxError, ValueError):  # 3.12: a non-UTF-8 byte's surrogate
    return None
  inner = tokens[1:-1]
  if ([t.string for t in (tokens[0], tokens[-1])] != ["[", "]"] or
      any(t.type != tokenize.STRING and t.string != "," for t in inner)):
    return None
  try:
    values = [ast.literal_eval(t.string) for t in inner if t.type == tokenize.STRING]
  except (ValueError, SyntaxError):  # f'...'
    return None
  return values if all(isinstance(v, str) for v in values) else None  # not b'...'


def _rows(reader: csv.DictReader, record: list[str], csv_path: str
          ) -> Iterator[tuple[dict, list[str], int]]:
  """(row, the lines it is written on, the first of them past blank lines) of each record of
  `reader`, whose lines read since the last record are in `record` (`_kept`; emptied here). A
  csv.Error, a cell longer than csv.field_size_limit() (a quote opened and never closed reads
  the lines after it into one cell; on one line, a caption is that long), is a FolderError
  naming the record's line and the fix."""
  done = reader.line_num  # the last line of the records read
  while True:
    error = None
    try:
      row = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      error = e
    lines, record[:] = record[:], []
    start = done + 1 + next((i for i, line in enumerate(lines) if line.strip()), 0)
    if error is not None and len([line for line in lines if line.strip()]) < 2:  # one line
      raise FolderError(f"{csv_path}:{start}: {error}: a caption that long cannot be read "
                        "from captions.csv; shorten it, or give it in captions.jsonl.")
    if error is not None:
      raise FolderError(
          f"{csv_path}:{start}: {error}: a quote opened in that record is never closed, so the "
          "lines after it were read as one cell. Close it, or write a quote inside a caption "
          'as two and quote the caption ("a 12"" record").')
    yield row, lines, start
    done = reader.line_num


def _reads_other_records(names: DiskNames, lines: list[str], file_index: int, columns: int,
                         own: str, where: str) -> bool:
  """Whether a record written on several `lines` (a quoted cell holding line breaks) holds a
  line after its first that is a record of its own, its cell `file_index` naming a file of the
  folder (as a caption's name may: another Unicode form, case or separator) other than the
  record's (`own`), or its own file again in a whole record (`columns` cells, its quotes closed:
  one file's captions may take several records, and a caption may mention its file): a quote
  left open (closed by a later record's) read those records into its cell."""
  def file_of(name: str) -> str | None:
    if not name or "\0" in name:  # os calls raise on a NUL
      return None
    try:
      rel, written = _disk_file(names, name, where)
    except FolderError:  # entries by that name in several Unicode forms: the folder's files
      return name
    return rel or (written and names.in_other_case(written))
  own_file, own_lines = file_of(own.strip()), 0
  for i, line in enumerate(line for line in lines if line.strip()):
    cells = next(csv.reader([line], skipinitialspace=True), [])
    rel = file_of(cells[file_index].strip() if len(cells) > file_index else "")
    whole = len(cells) >= columns and line.count('"') % 2 == 0
    own_lines += rel is not None and rel == own_file and (whole or not i)
    if i and rel is not None and (rel != own_file or own_lines > 1):
      return True
  return False


def _kept(lines: Iterable[str], record: list[str]) -> Iterator[str]:
  """`lines`, each also appended to `record` (which the caller empties after each record)."""
  for line in lines:
    record.append(line)
    yield line


def _unquoted_caption(lines: list[str], cells: list[str], caption_cells: int) -> str:
  """The last column's text of the record written on `lines` whose `cells` (as read, with
  skipinitialspace) end with `caption_cells` cells of its caption (an unquoted comma in it):
  joined with the spaces after its commas as written (the record read again without
  skipinitialspace, if that reads the same cells)."""
  raw = next((r for r in csv.reader(io.StringIO("".join(lines), newline="")) if r), [])
  if [c.strip() for c in raw] == [c.strip() for c in cells]:
    cells = raw
  return ",".join(cells[-caption_cells:])


def _refuse_utf16(path: str) -> None:
  """A UTF-16 file (Excel's "Unicode text") would read as garbage lines; say so instead."""
  if os.path.isfile(path):
    with open(path, "rb") as f:
      if f.read(2) in (b"\xff\xfe", b"\xfe\xff"):
        raise FolderError(f"{path} is UTF-16 text; save it as UTF-8 (e.g. Excel's \"CSV UTF-8\").")
