"""A captioned folder's names: those its captions files write -> the files on disk, compared
after Unicode NFC normalisation and, where the disk finds names so, without case; the folders
and files a build walks; and the error of a folder that cannot make a dataset."""
from __future__ import annotations

import collections
import os
import unicodedata
from collections.abc import Iterator


class FolderError(ValueError):
  """A folder that cannot make a dataset (no captions file, an unreadable one, no usable image);
  the message names the file and the fix."""


def names_in(folder: str) -> list[str]:
  """The entries of `folder` (none if it cannot be listed), sorted."""
  try:
    return sorted(os.listdir(folder))
  except OSError:
    return []


def relative_name(folder: str, name: str) -> str | None:
  """`name` (relative to `folder`, or absolute) relative to `folder`; None if it is outside.

  An absolute name may reach the folder through another path to it (a symlink); a file inside
  the folder may itself be a symlink to anywhere."""
  def outside(rel: str) -> bool:
    return rel == os.pardir or rel.startswith(os.pardir + os.sep)
  path = os.path.normpath(os.path.join(folder, name))
  rel = os.path.relpath(path, folder)
  if outside(rel):  # only then: realpath stats each part of both paths
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(folder))
  return None if outside(rel) else rel


class DiskNames:
  """Names in captions files -> the names on disk, compared after Unicode NFC normalisation (and
  without case where the disk finds a name so: macOS's and Windows' disks)."""

  def __init__(self, folder: str):
    self.folder = folder
    self._listings: dict[str, dict[str, list[str]]] = {}
    self._folded: dict[str, dict[str, list[str]]] = {}
    self._resolved: dict[str, str | None] = {}

  def _listing(self, directory: str) -> dict[str, list[str]]:
    """NFC name -> the entries of `directory` with that name (more than one: an ambiguity)."""
    if directory not in self._listings:
      by_nfc = collections.defaultdict(list)
      for entry in names_in(directory):
        by_nfc[unicodedata.normalize("NFC", entry)].append(entry)
      self._listings[directory] = dict(by_nfc)
    return self._listings[directory]

  def _without_case(self, directory: str, part: str) -> list[str]:
    """The entries of `directory` named `part` up to case (and Unicode form)."""
    if directory not in self._folded:
      by_folded = collections.defaultdict(list)
      for nfc, entries in self._listing(directory).items():
        by_folded[nfc.casefold()].extend(entries)
      self._folded[directory] = dict(by_folded)
    return self._folded[directory].get(unicodedata.normalize("NFC", part).casefold(), [])

  def in_other_case(self, rel: str) -> str | None:
    """The one file named `rel` (relative to the folder) up to case, or None."""
    parts: list[str] = []
    for part in rel.split(os.sep):
      folded = self._without_case(os.path.join(self.folder, *parts), part)
      if len(folded) != 1:
        return None
      parts.append(folded[0])
    rel = os.path.join(*parts)
    return rel if os.path.isfile(os.path.join(self.folder, rel)) else None

  def by_its_end(self, path: str) -> str | None:
    """The file of the folder that the absolute `path` outside it ends with (the longest such
    end: /home/ann/photos/sub/a.jpg, written on another machine, is sub/a.jpg), or None."""
    parts = os.path.normpath(path).split(os.sep)
    for k in range(1, len(parts)):
      rel = os.path.join(*parts[k:])
      if os.path.isfile(os.path.join(self.folder, rel)):
        return rel
    return None

  def resolve(self, rel: str, where: str) -> str | None:
    """The on-disk spelling of the file `rel` (relative to the folder); None if it is no file (nor
    a link to a file that is gone). Found once per `rel`: captions files name a file per
    caption (a 1M-line file of 50k images took 35 s, not 11)."""
    if rel not in self._resolved:
      self._resolved[rel] = self._resolve(rel, where)
    return self._resolved[rel]

  def _resolve(self, rel: str, where: str) -> str | None:
    parts: list[str] = []
    for part in rel.split(os.sep):
      directory = os.path.join(self.folder, *parts)
      matches = self._listing(directory).get(unicodedata.normalize("NFC", part), [])
      if part in matches:  # spelled as on disk: no other form is meant
        matches = [part]
      if not matches and os.path.lexists(os.path.join(directory, part)):
        # A case-insensitive disk found `Cat.JPG` as cat.jpg: the name on disk is the image's
        # (one example of both spellings; cat.jpg not also an uncaptioned file).
        folded = self._without_case(directory, part)
        matches = folded if len(folded) == 1 else []  # several: which one it found is unknown
      if len(matches) > 1:
        raise FolderError(
            f"{where} names {part!r}, but {directory} holds {len(matches)} entries with that name "
            f"in different Unicode forms: {', '.join(ascii(m) for m in matches)}. Rename or "
            "remove all but one of them.")
      parts.append(matches[0] if matches else part)
    rel = os.path.join(*parts)
    path = os.path.join(self.folder, rel)
    # A link whose target is gone (moved, deleted) still names the image: the build skips it as
    # "broken_link", not as a name to check.
    broken_link = os.path.islink(path) and not os.path.exists(path)
    return rel if os.path.isfile(path) or broken_link else None


def closed_folder(folder: str, rel: str) -> str | None:
  """The first folder on the way to the file `rel` (relative to `folder`) that exists but that
  this user cannot enter (its mode: copied with another owner's), if any."""
  directory = folder
  for part in rel.split(os.sep)[:-1]:
    directory = os.path.join(directory, part)
    if os.path.isdir(directory) and not os.access(directory, os.X_OK):
      return directory
  return None


def walked_folders(folder: str) -> Iterator[tuple[str, list[str]]]:
  """`folder` and each folder under it, linked folders too (but not round a loop), with the names
  of its files, in sorted order."""
  above = {folder: {os.path.realpath(folder)}}  # each walked folder's real path and its parents'
  for root, dirs, files in os.walk(folder, followlinks=True):
    # A link back to a folder above (a loop) is not walked again: two such would take 2**40.
    real = {d: os.path.realpath(os.path.join(root, d)) for d in dirs}
    dirs[:] = sorted(d for d in dirs if real[d] not in above[root])
    for d in dirs:
      above[os.path.join(root, d)] = above[root] | {real[d]}
    yield root, sorted(files)


def walk_files(folder: str) -> Iterator[str]:
  """The path of every file walked_folders(folder) finds."""
  return (os.path.join(root, f) for root, files in walked_folders(folder) for f in files)


def listed(rel: str) -> bool:
  """Whether a build lists the file `rel` (relative to its folder), if an image: those the
  captions do not name are counted as uncaptioned. None in a hidden folder (`.Trash-1000/`,
  `.Trashes/`, a `.thumbnails/` cache), no `._NAME` file (AppleDouble: the resource fork macOS
  writes beside each file it copies to a FAT/exFAT drive or a network share; no image)."""
  *folders, name = rel.split(os.sep)
  return not name.startswith("._") and not any(f.startswith(".") for f in folders)
