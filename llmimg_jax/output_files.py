"""The paths that flags name and the files that the commands write: `~` expanded and a closed
folder on the way refused, naming the flag; a path in full as the log names it, an output's checks
before the work that makes it, and writes that leave the previous file whole, or keep the results
elsewhere where the late write fails."""
from __future__ import annotations

import contextlib
import errno
import getpass
import os
import re
import stat
import tempfile
from pathlib import Path


def in_full(path: str | os.PathLike) -> Path:
  """`path` absolute and without '..', as the log names it: a log is read later and elsewhere (a
  batch job's, another shell), where a path relative to the launch directory does not resolve.
  Symlinks are kept as named (a mounted bucket) but for one a '..' steps out of: `link/..` is its
  target's parent, so that link's target stands in for it (read, not resolved in full)."""
  full, clean = Path(path).absolute(), Path(os.path.abspath(path))
  if os.path.realpath(clean) == os.path.realpath(full):
    return clean
  try:
    return _out_of_links(full) or full  # None: a loop of links
  except OSError:  # a link removed meanwhile
    return full


def _out_of_links(path: Path) -> Path | None:
  """Absolute `path` with each '..' gone: it drops the name before it, and after a link that
  link's target first stands in for it. None past 40 links (a loop; Linux's limit too)."""
  done, todo, links = [path.anchor], [*reversed(path.parts[1:])], 0
  while todo:
    if (part := todo.pop()) != "..":
      done.append(part)
    elif len(done) > 1 and os.path.islink(link := os.path.join(*done)):
      if (links := links + 1) > 40:
        return None
      target = Path(os.readlink(link))
      done = [target.anchor] if target.is_absolute() else done[:-1]
      todo += ["..", *reversed(target.parts[target.is_absolute():])]
    elif len(done) > 1:
      done.pop()
  return Path(*done)


def unstorable(path: str | os.PathLike, saving: bool = True) -> str | None:
  """Why Orbax cannot save (`saving`) or read a checkpoint under `path` (in full), or None. Its
  array storage (TensorStore) reads a backslash as a folder separator, and its save finds each
  host's arrays with a glob of the path: either way a run exited 0 with every checkpoint
  unreadable (a '*' or '?' could match another run's folder); a read takes the path as it is.
  Nor can it name bytes that are not UTF-8 (which Python holds as surrogates): the first save
  failed after compiling, in hundreds of tracebacks."""
  text = os.fspath(path)
  if "\\" in text:
    return ("holds a backslash, which Orbax's array storage (TensorStore) reads as a folder "
            "separator")
  if saving and re.search(r"[*?]|\[[^/]*\]", text):  # a lone '[' is no pattern
    return "holds a wildcard (*, ?, [...]), which Orbax's save reads as a pattern (a glob)"
  if not is_utf8(text):
    return "is not UTF-8, which Orbax's array storage (TensorStore) cannot name"
  return None


def is_utf8(text: str | os.PathLike) -> bool:
  """Whether `text` (a path, a caption) is UTF-8: not bytes that Python holds as surrogates
  (os.fsdecode, surrogateescape), nor a JSON escape of half a character ("\\ud83d")."""
  try:
    os.fspath(text).encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
  """Whether `path` is `folder` or in a folder under it, with links resolved or as written (a
  dataset build follows a link in its folder to a folder elsewhere)."""
  for resolve in (os.path.realpath, in_full):  # in_full: `link/..` is its target's parent
    full = [os.fspath(resolve(os.path.expanduser(p))) for p in (path, folder)]
    if os.path.commonpath(full) == full[1]:
      return True
  return False


def in_training_folder(path: str | os.PathLike, data) -> bool:
  """Whether `path` is in the images a run trains on: `data` (its config's data section, a
  ConfigDict or the dict of config.json) reads a captioned_folder, and `path` is in its folder."""
  folder = str(data.get("folder") or "")
  return data.get("name") == "captioned_folder" and bool(folder.strip()) and inside(path, folder)


def flag_path(path: str | os.PathLike, flag: str) -> Path:
  """The path a flag names, `path` with a leading ~ or ~user expanded. A ValueError naming `flag`
  where that home is unknown (not pathlib's RuntimeError and its traceback), or where a folder on
  the way does not let this user in (every later stat would be a PermissionError naming `path`
  alone; Python 3.11's Path.exists raises it)."""
  try:
    expanded = Path(path).expanduser()
  except RuntimeError:
    text = os.fspath(path)
    head = text.split("/", 1)[0]
    if head == "~":
      raise ValueError(f"{flag} {text!r}: ~ cannot be expanded (HOME is unset and this user has "
                       "no home directory); set HOME, or write the path out in full.") from None
    raise ValueError(f"{flag} {text!r}: {head} is no user's home directory (no user "
                     f"{head[1:]!r} here); write the path out in full, or ~/ for your own "
                     "home.") from None
  if why := why_closed(expanded, f"{flag} {os.fspath(path)!r}"):
    raise ValueError(why)
  return expanded


def why_closed(path: str | os.PathLike, named: str) -> str | None:
  """Where a folder on the way to `path` does not let this user in: a message naming `named` (the
  flag and the path), that folder with its mode and owner, and the fixes; else None."""
  if (closed := closed_folder(path)) is None:
    return None
  return (f"{named}: {closed} ({mode_and_owner(closed)}) does not let this user ({this_user()}) "
          "in, so nothing in it can be read or written; run as a user it lets in, give them its "
          "search (x) permission, or name a path outside it.")


def closed_folder(path: str | os.PathLike) -> Path | None:
  """The folder on the way to `path` (links followed) that this user may not enter, where a
  stat of `path` fails with PermissionError; None where it does not."""
  try:
    os.stat(path)
    return None
  except PermissionError:
    pass
  except OSError:  # missing (a new output), a loop of links: other checks name those
    return None
  full = Path(os.path.realpath(path))  # links resolved up to the closed folder
  for step in (*reversed(full.parents), full):
    try:
      os.stat(step)
    except PermissionError:
      return step.parent
    except OSError:
      return None
  return None


def mode_and_owner(path: str | os.PathLike) -> str:
  """'drwx------, owner alice': what decides who may use `path`."""
  info = os.stat(path)
  return f"{stat.filemode(info.st_mode)}, owner {_user(info.st_uid)}"


def this_user() -> str:
  return _user(os.geteuid()) if hasattr(os, "geteuid") else getpass.getuser()  # Windows: none


def _user(uid: int) -> str:
  try:
    import pwd  # pylint: disable=g-import-not-at-top  (not on Windows)
    return pwd.getpwuid(uid).pw_name
  except (ImportError, KeyError):  # a container's arbitrary uid
    return f"uid {uid}"


def expand_output(path: str, flag: str) -> str:
  """An output flag's file with ~ expanded (flag_path) and a trailing '/' kept, which a Path
  drops: check_output_file then refuses the folder's name instead of writing a file by it."""
  expanded = str(flag_path(path, flag))
  return os.path.join(expanded, "") if path.endswith(("/", os.sep)) else expanded


def refuse_existing(path: str | os.PathLike, named: str, overwrite: bool,
                    overwrite_flag: str = "overwrite",
                    error: type[Exception] = FileExistsError) -> None:
  """`error` if the output `path` exists, unless `overwrite`; `named` is how the message names
  it (the flag and the path). A link is written through, as the shell's `>` does (each output
  writes os.path.realpath(path)): its target is what must not exist, named beside it."""
  target = os.path.realpath(path)  # a link to nothing is a new file
  if os.path.lexists(target) and not overwrite:
    link = f" (a link to {target})" if os.path.islink(path) else ""
    raise error(f"{named}{link} exists; remove it, name a new file, or pass --{overwrite_flag} to "
                "replace it.")


def leads_to_itself(path: str | os.PathLike) -> bool:
  """Whether `path` leads back to itself through links (ln -s x x, or through others), where the
  shell's > fails ('Too many levels of symbolic links')."""
  try:
    os.path.realpath(path, strict=True)
  except OSError as e:
    return e.errno == errno.ELOOP
  return False


def check_output_file(path: str | os.PathLike, flag: str, overwrite: bool, what: str = "a file",
                      overwrite_flag: str = "overwrite",
                      error: type[Exception] = OSError) -> str:
  """The file an output flag writes `path` to, checked before the work that makes it: a link is
  written through, as the shell's `>` does, so this is its target (a missing one too; the link is
  kept). `error` naming `flag`, the path and the fix (`what`: what to name instead) if it leads
  to itself through links, is a folder or not a regular file (a pipe, a device), its folder
  cannot be made (made here if missing) or written in, or it exists and not `overwrite`."""
  named = f"{flag} {os.fspath(path)!r}"
  if leads_to_itself(path):  # non-strict, realpath leaves the loop unresolved: that link 'exists'
    raise error(f"{named} leads to itself through a link (a loop); name {what}.")
  target = os.path.realpath(path)
  if os.path.isdir(target):
    raise error(f"{named} is a folder; name {what}.")
  if os.fspath(path).endswith(("/", os.sep)):  # realpath drops it: a file by the folder's name
    raise error(f"{named} names a folder (it ends in '/'); name {what}.")
  # /dev/stdout, /dev/null, a fifo (os.path: through /proc's fd links, which realpath cannot):
  # the output's rename would put a file in its place (as root, /dev/null's), not write into it.
  if os.path.exists(path) and not os.path.isfile(path):
    raise error(f"{named} is not a regular file (a pipe, a device or a socket), which an output "
                f"replaces whole; name {what}.")
  folder = os.path.dirname(target)
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:  # a file where a folder should be, no permission
    raise error(f"{named}: cannot create its folder {folder} ({type(e).__name__}: "
                f"{e.strerror or e}); name {what} in a folder you can write.") from None
  if problem := cannot_write(folder):  # not os.access: root passes it in /proc
    raise error(f"{named}: cannot write into {folder} ({problem}); name {what} in a folder you "
                "can write.")
  name_bytes, name_max = len(os.fsencode(os.path.basename(target))), _name_max(folder)
  if 0 < name_max < name_bytes:  # else the write failed after the work (lexists: False)
    raise error(f"{named}: its name is {name_bytes} bytes, over the {name_max} its folder's "
                f"filesystem allows; name {what} with a shorter name.")
  refuse_existing(path, named, overwrite, overwrite_flag, error)
  return target


def _name_max(folder: str) -> int:
  """The longest file name `folder`'s filesystem takes, in bytes; <= 0 where it says none."""
  try:
    return os.pathconf(folder, "PC_NAME_MAX")
  except (OSError, ValueError):
    return 255


def cannot_write(folder: str | os.PathLike) -> str | None:
  """Why no file can be created in `folder` ('PermissionError: Permission denied'), else None.
  A file is created and removed: os.access answers from the mode bits (and a read-only mount),
  which root passes where the kernel still refuses a new file (/proc, /sys), and a FUSE
  filesystem may answer only when a file is made. Its name is unique: hosts sharing a folder may
  run under the same pid."""
  try:
    fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=folder)
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    return f"{type(e).__name__}: {e.strerror or e}"
  return None


def write_results(path: str | os.PathLike, data: str | bytes, named: str, overwrite: bool,
                  during: str, spare: str, what: str = "the results") -> None:
  """`data` written whole to `path` (through a link, as `>`) long after its check: if that fails
  (its folder removed `during` the work, a full disk, a file written there meanwhile, kept unless
  `overwrite`), to a new file named like `spare` ('eval_*.json') in the temporary folder, or else
  (text) to stdout; an OSError names `named` (a link with its target), the cause and where `what`
  are."""
  target = os.path.realpath(path)  # a loop of links: `path` itself
  try:  # a path named after the work (evaluate.py's default) is checked only here
    if leads_to_itself(path) or os.path.exists(path) and not os.path.isfile(path):
      raise OSError(errno.EINVAL, "a loop of links, a folder, a pipe or a device: not a file")
    try:
      if not overwrite and os.path.lexists(target):
        raise FileExistsError
      write_atomically(target, data, replace=overwrite)
    except FileExistsError:  # also one written in the instant before this write (another host's)
      raise FileExistsError(errno.EEXIST, f"a file was written there {during}") from None
  except OSError as e:
    link = f" (a link to {target})" if os.path.islink(path) and not leads_to_itself(path) else ""
    why = f"could not write {named}{link} ({type(e).__name__}: {e.strerror or e})"
    prefix, suffix = spare.split("*")
    spare_file = None
    try:
      with tempfile.NamedTemporaryFile("wb", suffix=suffix, prefix=prefix, delete=False) as f:
        spare_file = f.name
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
      where = f"are in {spare_file}"
    except OSError:  # nor a temporary file: text is printed, bytes (an .npz) cannot be
      left = ""
      if spare_file is not None:  # a partial one (a full disk); if it stays, it is named
        try:
          os.unlink(spare_file)
        except OSError as e:
          left = f" ({spare_file}, cut short, could not be removed: {e.strerror or e})"
      if isinstance(data, str):
        print(data)
      where = ("are printed above" if isinstance(data, str) else
               "are lost (no whole spare file either)") + left
    raise OSError(f"{why}; {what} {where}.") from None


def write_atomically(path: str | os.PathLike, data: str | bytes, replace: bool = True) -> None:
  """`path` replaced by `data` (text as UTF-8) in one rename: a crash mid-write leaves the
  previous file. The temporary file is this process's, so concurrent writers do not mix, and it
  is removed if the write fails. Its name keeps up to 200 bytes of `path`'s, whole characters: a
  legal name of over 240 (up to 255) made one too long, and the write failed after the work.
  Unless `replace`, a file at `path` stays, even one another process wrote an instant before
  (FileExistsError): the file is published with a hard link, which cannot replace one."""
  path = Path(path)
  name = path.name
  while len(os.fsencode(name)) > 200:
    name = name[:-1]
  tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
  try:
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    if replace or not _linked(tmp, path):
      os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):  # e.g. a folder in its place: the first error is the one
      tmp.unlink(missing_ok=True)
    raise


def _linked(tmp: Path, path: Path) -> bool:
  """`tmp` published as the new file `path` with a hard link, FileExistsError if there is one;
  False where the filesystem has no hard links (FAT, some FUSE mounts): checked instead."""
  try:
    os.link(tmp, path)
  except FileExistsError:
    if not os.path.samefile(tmp, path):  # NFS: a retried LINK that had made it says EEXIST
      raise
  except OSError:
    if os.path.lexists(path):
      raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
    return False
  with contextlib.suppress(OSError):  # published: a temporary file left is no failed write
    tmp.unlink()
  return True
