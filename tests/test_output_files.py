"""llmimg_jax.output_files: `~` expanded naming the flag, paths in full as the log names them,
the check that a folder can be written, the checks of an output file before the work, and the
late write that keeps what it cannot write."""
import os
import re
import tempfile

import pytest

from llmimg_jax import output_files


def test_flag_path_names_the_flag_where_a_home_is_unknown(monkeypatch):
  """output_files.flag_path: pathlib's RuntimeError for ~ without HOME or a user entry (a
  container's arbitrary uid) is a ValueError naming the flag; a known home is expanded."""
  import pwd
  from pathlib import Path
  monkeypatch.setenv("HOME", "/home/me")
  assert output_files.flag_path("~/run", "--workdir") == Path("/home/me/run")
  monkeypatch.delenv("HOME")
  monkeypatch.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
  with pytest.raises(ValueError, match=r"^--out '~/r\.json': ~ cannot be expanded \(HOME is unset "
                     r"and this user has no home directory\); set HOME, or write the path out in "
                     r"full\.$"):
    output_files.flag_path("~/r.json", "--out")



_FLAG_PATHS = """
import json, sys
from llmimg_jax import output_files
results = {}
for name in sys.argv[1:]:
  try:
    results[name] = str(output_files.flag_path(name, "--workdir"))
  except ValueError as e:
    results[name] = f"ValueError: {e}"
print(json.dumps(results))
"""


def test_flag_path_names_the_folder_that_keeps_this_user_out(tmp_path):
  """A path under a folder this user may not enter was every later stat's PermissionError naming
  the path alone (train.py: a traceback from Path.exists): a ValueError naming the flag, that
  folder, its mode and owner, and the fixes, wherever the path leads (through a link too)."""
  import json
  import subprocess
  import sys
  from tests.train.cli_utils import as_modes_hold, closed, env
  shut = tmp_path / "shut"
  shut.mkdir()
  (tmp_path / "link").symlink_to(shut / "run")
  user = output_files.this_user()  # a container's uid without a name: 'uid N'
  refused = (f"ValueError: --workdir {{!r}}: {shut} (d---------, owner {user}) does not let this "
             f"user ({user}) in, so nothing in it can be read or written; run as a user it lets "
             "in, give them its search (x) permission, or name a path outside it.")
  names = [str(shut / "run"), str(shut / "a" / "b"), str(tmp_path / "link"), str(shut),
           str(tmp_path / "new" / "run")]
  with closed(shut):
    proc = subprocess.run([*as_modes_hold(), sys.executable, "-c", _FLAG_PATHS, *names],
                          capture_output=True, text=True, env=env())
  assert proc.returncode == 0, proc.stderr
  assert json.loads(proc.stdout) == {
      **{name: refused.format(name) for name in names[:3]},
      str(shut): str(shut), str(tmp_path / "new" / "run"): str(tmp_path / "new" / "run")}

def test_in_full_drops_dot_dot_where_it_names_the_same_folder(monkeypatch, tmp_path):
  """output_files.in_full, as the log names paths: absolute, '..' gone and links kept; a '..'
  after a link steps out of its target (not the link's folder), so there the target stands in for
  the link."""
  (tmp_path / "code").mkdir()
  (tmp_path / "disk" / "runs").mkdir(parents=True)
  (tmp_path / "code" / "runs").symlink_to(tmp_path / "disk" / "runs")
  monkeypatch.chdir(tmp_path / "code")
  assert output_files.in_full("../new/run") == tmp_path / "new" / "run"  # need not exist yet
  assert output_files.in_full("runs/x") == tmp_path / "code" / "runs" / "x"
  assert output_files.in_full("runs/../runs/x") == tmp_path / "code" / "runs" / "x"
  assert output_files.in_full("runs/../x") == tmp_path / "disk" / "x"


def test_in_full_follows_only_the_links_a_dot_dot_steps_out_of(monkeypatch, tmp_path):
  """A '..' after a link was kept with the whole path as typed (mnt/a/inner/../x); now that link's
  target (relative ones too, and links within it) stands in for it, and the links before it
  stay as named. Each name is the folder the OS opens. A loop of links is given up on."""
  bucket = tmp_path / "bucket"
  (bucket / "a" / "deep" / "inner").mkdir(parents=True)
  (tmp_path / "store" / "runs").mkdir(parents=True)
  (tmp_path / "code").mkdir()
  (tmp_path / "code" / "mnt").symlink_to(bucket)  # a mounted bucket: kept as named
  (bucket / "a" / "inner").symlink_to("deep/inner")
  (bucket / "runs").symlink_to("../store/runs")  # steps out of mnt as well
  (bucket / "loop").symlink_to("loop")
  monkeypatch.chdir(tmp_path / "code")
  mnt = tmp_path / "code" / "mnt"
  cases = {"mnt/a/inner/../x": mnt / "a" / "deep" / "x",
           "mnt/a/inner/../../x": mnt / "a" / "x",
           "mnt/runs/../x": tmp_path / "store" / "x"}
  for typed, named in cases.items():
    assert (typed, output_files.in_full(typed)) == (typed, named)
    assert os.path.realpath(named) == os.path.realpath(typed)
  assert output_files._out_of_links(mnt / "loop" / ".." / "x") is None  # in_full: the path as typed


def test_cannot_write_creates_a_file_where_os_access_answers_for_the_mode_bits(tmp_path):
  """output_files.cannot_write, the check before the work of every command that writes: a file is
  made and removed, so /proc, which root's os.access allows, is refused; the reason names the
  error."""
  assert output_files.cannot_write(tmp_path) is None
  assert list(tmp_path.iterdir()) == []  # the probe is gone
  assert output_files.cannot_write("/proc") in ("FileNotFoundError: No such file or directory",
                                       "PermissionError: Permission denied")
  assert (output_files.cannot_write(tmp_path / "gone")
          == "FileNotFoundError: No such file or directory")


def test_an_output_path_through_a_loop_of_links_is_named_as_a_loop(tmp_path):
  """A link to itself (`ln -s x x`) was refused as '(a link to x) exists' and with --overwrite
  the output replaced the link, where the shell's `>` fails ('Too many levels of symbolic
  links'); a loop in its folder was 'cannot create its folder (FileExistsError)'. Each is named
  as a loop, overwrite or not, and nothing is written."""
  (tmp_path / "self.json").symlink_to("self.json")
  (tmp_path / "a.json").symlink_to("b.json")
  (tmp_path / "b.json").symlink_to("a.json")
  (tmp_path / "dir").symlink_to("dir")
  for path in (tmp_path / "self.json", tmp_path / "a.json", tmp_path / "dir" / "r.json"):
    for overwrite in (False, True):
      with pytest.raises(ValueError) as e:
        output_files.check_output_file(path, "--json", overwrite, "a .json file", error=ValueError)
      assert str(e.value) == (f"--json {str(path)!r} leads to itself through a link (a loop); "
                              "name a .json file.")
  assert sorted(p.name for p in tmp_path.iterdir() if p.is_symlink()) == [
      "a.json", "b.json", "dir", "self.json"]
  assert [p.name for p in tmp_path.iterdir() if not p.is_symlink()] == []


def test_an_output_that_is_not_a_regular_file_is_named_not_replaced(tmp_path):
  """A named pipe or a device (/dev/null) passed with overwrite, and the output then replaced it
  with a file (write_atomically's rename; as root /dev/null itself), where the shell's `>` writes
  into it; without overwrite it was '... exists'. Each is named before the work."""
  fifo = tmp_path / "pipe.json"
  os.mkfifo(fifo)
  for path in (fifo, "/dev/null"):
    for overwrite in (False, True):
      with pytest.raises(ValueError) as e:
        output_files.check_output_file(path, "--json", overwrite, "a .json file", error=ValueError)
      assert str(e.value) == (f"--json {str(path)!r} is not a regular file (a pipe, a device or "
                              "a socket), which an output replaces whole; name a .json file.")
  assert [p.name for p in tmp_path.iterdir()] == ["pipe.json"] and not fifo.is_file()


def test_bytes_that_no_file_can_take_are_not_printed(tmp_path, monkeypatch, capsys, spare):
  """write_results keeps text it cannot write in a spare file, or prints it; bytes (an .npz) go to
  a spare file with the output's suffix, and where none can be made are said lost, not printed."""
  out = tmp_path / "gone" / "ref.npz"  # its folder removed meanwhile
  with pytest.raises(OSError, match=r"the statistics are in .*/stats_\w+\.npz\.$"):
    output_files.write_results(out, b"PK\x03\x04", "--write_stats", False, "meanwhile",
                               "stats_*.npz", "the statistics")
  [saved] = spare.glob("stats_*.npz")
  assert saved.read_bytes() == b"PK\x03\x04"
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no_tmp"))
  with pytest.raises(OSError, match=r"^could not write --write_stats \(FileNotFoundError: No such "
                     r"file or directory\); the statistics are lost "
                     r"\(no whole spare file either\)\.$"):
    output_files.write_results(out, b"PK\x03\x04", "--write_stats", False, "meanwhile",
                               "stats_*.npz", "the statistics")
  assert capsys.readouterr().out == ""


def _fill_the_disk(monkeypatch) -> None:
  """Every temporary file write fails as on a full disk (the file itself is made)."""
  real = tempfile.NamedTemporaryFile

  def full_disk(*args, **kwargs):
    f = real(*args, **kwargs)
    def write(data):
      raise OSError(28, "No space left on device")
    f.write = write
    return f
  monkeypatch.setattr(tempfile, "NamedTemporaryFile", full_disk)


def test_the_spare_file_has_the_callers_suffix_and_none_is_left_half_written(tmp_path,
                                                                            monkeypatch, spare):
  """The spare file took the output's suffix: `--out results` kept JSON in a suffixless `eval_*`
  (`--json out.txt`: a `run_*.txt`); and one a full disk cut short was left behind while the
  error said the results were printed."""
  out = tmp_path / "gone" / "results"  # its folder removed meanwhile
  with pytest.raises(OSError, match=r"the results are in .*/eval_\w+\.json\.$"):
    output_files.write_results(out, "{}", "--out", False, "meanwhile", "eval_*.json")
  [saved] = spare.glob("eval_*")
  assert saved.suffix == ".json" and saved.read_text() == "{}"
  saved.unlink()

  _fill_the_disk(monkeypatch)
  with pytest.raises(OSError, match=r"the results are printed above\.$"):
    output_files.write_results(out, "{}", "--out", False, "meanwhile", "eval_*.json")
  assert not list(spare.glob("eval_*"))


def test_a_half_written_spare_file_that_cannot_be_removed_is_named_and_the_results_printed(
    tmp_path, monkeypatch, capsys, spare):
  """Removing the spare file a full disk cut short raised out of write_results: the results were
  not printed and the error named neither the output nor where they are."""
  _fill_the_disk(monkeypatch)
  real_unlink = os.unlink

  def unlink(path, *args, **kwargs):  # the spare file's only
    if os.path.basename(path).startswith("eval_"):
      raise PermissionError(13, "Permission denied")
    real_unlink(path, *args, **kwargs)
  monkeypatch.setattr(os, "unlink", unlink)
  with pytest.raises(OSError, match=r"^could not write --out \(FileNotFoundError: No such file or "
                     r"directory\); the results are printed above \(.*/eval_\w+\.json, cut "
                     r"short, could not be removed: Permission denied\)\.$"):
    output_files.write_results(tmp_path / "gone" / "r.json", '{"fid": 1.0}', "--out", False,
                               "meanwhile", "eval_*.json")
  assert capsys.readouterr().out == '{"fid": 1.0}\n'


@pytest.mark.parametrize("named", ["results.json/", "~/results.json/"])
def test_a_folders_name_is_refused_not_written_as_a_file(named, tmp_path, monkeypatch):
  """An output flag's `results.json/` lost its '/' to flag_path (a Path), and its file was
  written as results.json (prepare --preview had its own fix, f41ef54; evaluate.py --out and
  --write_stats, run.py --json had none)."""
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.chdir(tmp_path)
  path = output_files.expand_output(named, "--out")
  assert path == f"{tmp_path}/results.json/" if named.startswith("~") else path == named
  with pytest.raises(OSError, match=r"^--out '.*results\.json/' names a folder \(it ends in "
                     r"'/'\); name a \.json file\.$"):
    output_files.check_output_file(path, "--out", False, "a .json file")
  assert output_files.expand_output("~/r.json", "--out") == f"{tmp_path}/r.json"
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["e" * 250 + ".json", "é" * 125 + ".npy"])  # 255, 254 bytes
def test_write_atomically_takes_the_longest_names(name, tmp_path):
  """Its temporary file, '.NAME.PID.tmp', was over 255 bytes: evaluate.py's --out failed after
  the evaluation, the T5 CLI's --encode_out in a traceback."""
  output_files.write_atomically(tmp_path / name, "{}")
  assert os.listdir(tmp_path) == [name] and (tmp_path / name).read_text() == "{}"


def test_a_name_too_long_for_its_filesystem_is_refused_before_the_work(tmp_path, monkeypatch):
  """prepare --preview with a 304-byte name built the whole dataset, then failed to save the grid
  ('File name too long'): the check had made and removed only its own short probe file."""
  path = tmp_path / ("g" * 300 + ".png")
  with pytest.raises(ValueError) as refused:
    output_files.check_output_file(path, "--preview", False, "an image file", error=ValueError)
  assert str(refused.value) == (f"--preview {str(path)!r}: its name is 304 bytes, over the 255 its "
                                "folder's filesystem allows; name an image file with a shorter "
                                "name.")
  longest = tmp_path / ("é" * 125 + ".npy")  # 254 bytes
  assert output_files.check_output_file(longest, "--out", False) == str(longest)
  monkeypatch.setattr(os, "pathconf", lambda *args: 0)  # a FUSE filesystem that says no limit
  assert output_files.check_output_file(path, "--out", False) == str(path)


@pytest.mark.parametrize("hard_links", [True, False])
def test_results_written_there_after_the_check_are_kept(hard_links, tmp_path, monkeypatch):
  """Two evaluations given one --out (on two hosts) finished together: each had found no file
  there, and the second's rename replaced the first's results without a word. A filesystem
  without hard links (FAT, some FUSE mounts) is checked just before the rename instead."""
  out = tmp_path / "results.json"
  out.write_text("the other's")
  lexists = os.path.lexists
  checks = []  # the first check, long before the write, found none
  monkeypatch.setattr(os.path, "lexists", lambda p: lexists(p) and bool(checks.append(p) or
                                                                        len(checks) > 1))
  if not hard_links:
    monkeypatch.setattr(os, "link", lambda *args: (_ for _ in ()).throw(PermissionError(1, "no")))
  with pytest.raises(OSError) as refused:
    output_files.write_results(out, "mine", f"--out {str(out)!r}", False, "during the evaluation",
                               "eval_*.json")
  assert out.read_text() == "the other's"
  why, spare = re.fullmatch(r"could not write --out '.*' \((.*)\); the results are in (\S+)\.",
                            str(refused.value)).groups()
  assert why == "FileExistsError: a file was written there during the evaluation"
  assert open(spare).read() == "mine"
  os.unlink(spare)
  assert os.listdir(tmp_path) == ["results.json"]  # no temporary file left
  output_files.write_results(tmp_path / "new.json", "mine", "--out", False, "", "eval_*.json")
  assert (tmp_path / "new.json").read_text() == "mine"


def test_a_link_that_made_it_though_it_said_it_had_not_is_the_write(tmp_path, monkeypatch):
  """NFS: a LINK retried after its reply was lost finds the file it made (EEXIST)."""
  link = os.link

  def link_then_exists(src, dst):
    link(src, dst)
    raise FileExistsError(17, "File exists")
  monkeypatch.setattr(os, "link", link_then_exists)
  output_files.write_results(tmp_path / "r.json", "mine", "--out", False, "", "eval_*.json")
  assert os.listdir(tmp_path) == ["r.json"] and (tmp_path / "r.json").read_text() == "mine"
