"""benchmarks/run.py refuses flags it cannot honour (timing counts, an existing --json file) before
any model is built, and writes --json whole."""
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from benchmarks import run

ROOT = Path(__file__).resolve().parents[2]


def _usage_error(monkeypatch, capsys, *args: str) -> str:
  """run.py's flag parsing of these flags: its one-line error (stderr); it must exit with 2."""
  monkeypatch.setattr(sys, "argv", ["benchmarks/run.py", *args])
  with pytest.raises(SystemExit) as e:
    run._parse()  # pylint: disable=protected-access
  assert e.value.code == 2
  return capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    # median of no calls: statistics.StatisticsError after the peak matmul and the first compile
    (["--iters", "0"], "--iters 0: give 1 or more"),
    (["--quick", "--iters=-2"], "--iters -2: give 1 or more"),
    # no warm-up at all without a word: the first timed call compiled
    (["--warmup", "-1"], "--warmup -1: give 0 or more")])
def test_a_count_below_its_least_is_a_usage_error_naming_the_flag(monkeypatch, capsys, args,
                                                                  message):
  assert f"run.py: error: {message}" in _usage_error(monkeypatch, capsys, *args)


def test_the_least_counts_are_accepted(monkeypatch):
  monkeypatch.setattr(sys, "argv", ["benchmarks/run.py", "--iters", "1", "--warmup", "0"])
  assert (run._parse().iters, run._parse().warmup) == (1, 0)  # pylint: disable=protected-access


def test_an_existing_json_file_is_refused_before_benchmarking(monkeypatch, capsys, tmp_path):
  """--json named an earlier run's file: it was replaced after minutes of benchmarking."""
  out = tmp_path / "cpu.json"
  out.write_text('{"results": []}')
  assert (f"run.py: error: --json '{out}' exists; remove it, name a new file, or pass --overwrite "
          "to replace it." in _usage_error(monkeypatch, capsys, "--quick", "--json", str(out)))
  assert out.read_text() == '{"results": []}'
  monkeypatch.setattr(sys, "argv", ["benchmarks/run.py", "--json", str(out), "--overwrite"])
  assert run._parse().overwrite  # pylint: disable=protected-access
  assert "--overwrite only applies to --json" in _usage_error(monkeypatch, capsys, "--overwrite")


@pytest.mark.parametrize("flag", ["--json", "--render"])
@pytest.mark.parametrize("value", ["", " "])
def test_a_blank_json_or_render_is_a_usage_error(monkeypatch, capsys, flag, value):
  """--json "$OUT" with OUT unset: '' was read as no --json (the results of the whole run not
  written, no word) and ' ' wrote a file named ' '; --render '' ran the benchmarks."""
  assert (f"run.py: error: {flag} is blank (e.g. {flag}=$OUT with OUT unset); name a .json file."
          in _usage_error(monkeypatch, capsys, flag, value))


def test_a_json_folder_name_is_refused_before_benchmarking(monkeypatch, capsys, tmp_path):
  """--json out.json/ wrote its results as the file out.json (the '/' lost to expanding ~)."""
  named = f"{tmp_path}/out.json/"
  assert (f"run.py: error: --json {named!r} names a folder (it ends in '/'); name a .json file."
          in _usage_error(monkeypatch, capsys, "--quick", "--json", named))
  assert not list(tmp_path.iterdir())


def test_a_json_folder_no_file_can_be_made_in_is_refused_before_benchmarking(monkeypatch,
                                                                             capsys):
  """--json's folder was made, never tried: one that cannot be written (no permission; as root
  /proc or a read-only mount) lost the results after minutes of benchmarking."""
  from benchmarks import timing
  monkeypatch.setattr(timing, "machine_info", lambda *a: pytest.fail("benchmarked"))
  monkeypatch.setattr(sys, "argv", ["benchmarks/run.py", "--skip-gan", "--skip-t5", "--json",
                                    "/proc/llmimg_nope.json"])
  with pytest.raises(SystemExit) as e:
    run.main()
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert re.search(r"run\.py: error: --json '/proc/llmimg_nope\.json': cannot write into /proc "
                   r"\((FileNotFoundError|PermissionError): .+\); name a \.json file in a folder "
                   r"you can write\.\n$", err), err


def test_a_json_link_is_refused_only_if_its_target_exists(monkeypatch, capsys, tmp_path):
  """A --json link was refused as existing (even to nothing), and with --overwrite the results
  replaced the link itself, where evaluate.py's --out, prepare's --preview and the text CLI's
  --encode_out write through a link to its target: that is what must not exist, named with it."""
  target, link = tmp_path / "cpu.json", tmp_path / "link.json"
  target.write_text('{"results": []}')
  link.symlink_to(target)
  err = _usage_error(monkeypatch, capsys, "--json", str(link))
  assert (f"run.py: error: --json '{link}' (a link to {target}) exists; remove it, name a new "
          "file, or pass --overwrite to replace it." in err)
  to_new = tmp_path / "to_new.json"
  to_new.symlink_to(tmp_path / "new" / "gpu.json")  # the target's folder is made too
  monkeypatch.setattr(sys, "argv", ["benchmarks/run.py", "--json", str(to_new)])
  assert run._parse().json == str(to_new)  # pylint: disable=protected-access


def test_a_json_file_under_home_is_expanded_as_every_path_flag_is(monkeypatch, tmp_path):
  """`--json=~/b/cpu.json` (no shell expands a ~ after '=') made a folder named '~' in the
  current one and wrote there, where evaluate.py's --out and prepare's --preview expand it."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "argv", ["benchmarks/run.py", "--json=~/b/cpu.json"])
  json_path = run._parse().json  # pylint: disable=protected-access
  assert json_path == str(tmp_path / "home" / "b" / "cpu.json")
  assert os.listdir(tmp_path) == ["home"] and os.listdir(tmp_path / "home" / "b") == []


def test_a_json_link_to_itself_is_named_as_a_loop(monkeypatch, capsys, tmp_path):
  """`ln -s cpu.json cpu.json` was refused as '(a link to ...) exists', and with --overwrite the
  results replaced the link after the benchmarks: a loop is named before them."""
  loop = tmp_path / "cpu.json"
  loop.symlink_to(loop.name)
  for overwrite in ([], ["--overwrite"]):
    assert (f"run.py: error: --json {str(loop)!r} leads to itself through a link (a loop); name "
            "a .json file.\n") in _usage_error(monkeypatch, capsys, "--json", str(loop), *overwrite)
  assert loop.is_symlink()


# run.py's main with no benchmark and a stand-in peak matmul: only its machine info and --json;
# $REMOVE_MEANWHILE, a folder removed while it "benchmarks", $WRITE_MEANWHILE a file written.
_RUN_NOTHING = """
import os, runpy, shutil, sys
from benchmarks import timing
def peak(*args):
  if "REMOVE_MEANWHILE" in os.environ:
    shutil.rmtree(os.environ["REMOVE_MEANWHILE"])
  if "WRITE_MEANWHILE" in os.environ:
    with open(os.environ["WRITE_MEANWHILE"], "w") as f:
      f.write("another run's results")
  return {"peak_flops_per_s": 1e9, "jax_flops_per_s": 1e9, "torch_flops_per_s": 1e9}
timing.peak_matmul_flops = peak
sys.argv = ["benchmarks/run.py", "--skip-gan", "--skip-t5", "--no-reuse-host-memory", *sys.argv[1:]]
runpy.run_path("benchmarks/run.py", run_name="__main__")
"""


def test_overwrite_replaces_the_json_file_whole(tmp_path):
  out = tmp_path / "cpu.json"
  out.write_text("an earlier run's results")
  result = subprocess.run([sys.executable, "-c", _RUN_NOTHING, "--json", str(out), "--overwrite"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.loads(out.read_text())
  assert saved["results"] == [] and saved["args"]["overwrite"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["cpu.json"]  # no temporary file left


def test_the_json_file_is_written_through_a_link(tmp_path):
  """With --overwrite the results replaced a --json link itself, and a link to nothing was
  refused; as the shell's `>`, the results go to its target (its folder made), the link kept."""
  target, to_new = tmp_path / "cpu.json", tmp_path / "to_new.json"
  target.write_text("an earlier run's results")
  (tmp_path / "link.json").symlink_to(target)
  to_new.symlink_to(tmp_path / "new" / "gpu.json")
  for link, flags in ((tmp_path / "link.json", ["--overwrite"]), (to_new, [])):
    result = subprocess.run([sys.executable, "-c", _RUN_NOTHING, "--json", str(link), *flags],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert link.is_symlink() and json.loads(link.read_text())["results"] == []
  assert sorted(p.name for p in tmp_path.rglob("*")) == [
      "cpu.json", "gpu.json", "link.json", "new", "to_new.json"]  # no temporary file left


def _failed_final_write(tmp_path, json_path, **env):
  """run.py with no benchmarks, `env` telling _RUN_NOTHING what to do to --json meanwhile: its
  result (exit status 1, no traceback) and the one file the results were saved to instead."""
  spare = tmp_path / "tmp"
  spare.mkdir()
  result = subprocess.run([sys.executable, "-c", _RUN_NOTHING, "--json", str(json_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env, "TMPDIR": str(spare)})
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  [saved] = spare.iterdir()
  return result, saved


def test_results_are_kept_where_the_json_file_cannot_be_written_after_the_benchmarks(tmp_path):
  """--json's folder is checked before the benchmarks, but a write that failed after them (the
  folder removed meanwhile, a full disk) lost the results in a traceback. They now go to a new
  file in the temporary folder, and the error names it (exit status 1)."""
  folder = tmp_path / "out"
  result, saved = _failed_final_write(tmp_path, folder / "cpu.json", REMOVE_MEANWHILE=str(folder))
  assert result.stderr.endswith(
      f"benchmarks/run.py: error: could not write --json '{folder / 'cpu.json'}' "
      f"(FileNotFoundError: No such file or directory); the results are in {saved}.\n"), (
          result.stderr[-3000:])
  assert json.loads(saved.read_text())["results"] == [] and not folder.exists()


def test_a_json_file_written_while_the_benchmarks_ran_is_kept(tmp_path):
  """--json is refused if it exists before the benchmarks, but a file written there meanwhile
  (another run's, given the same --json) was replaced by these results without a word, where
  evaluate.py and prepare refuse it again before they write. It is kept, these results go to a
  new file in the temporary folder, and the error names both (exit status 1)."""
  out = tmp_path / "cpu.json"
  result, saved = _failed_final_write(tmp_path, out, WRITE_MEANWHILE=str(out))
  assert result.stderr.endswith(
      f"benchmarks/run.py: error: could not write --json '{out}' (FileExistsError: a file was "
      f"written there while the benchmarks ran); the results are in {saved}.\n"), (
          result.stderr[-3000:])
  assert out.read_text() == "another run's results"
  assert json.loads(saved.read_text())["results"] == []


def test_results_are_printed_where_no_file_can_be_written_after_the_benchmarks(tmp_path,
                                                                               monkeypatch,
                                                                               capsys):
  """Where the temporary folder cannot be written either, the results are printed as JSON."""
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no_tmp"))
  results = {"results": [{"name": "gan 32px step"}]}
  with pytest.raises(SystemExit) as e:
    run.write_json(str(tmp_path / "gone" / "cpu.json"), results)
  assert e.value.code == (f"benchmarks/run.py: error: could not write --json "
                          f"'{tmp_path / 'gone' / 'cpu.json'}' (FileNotFoundError: No such file or "
                          "directory); the results are printed above.")
  assert json.loads(capsys.readouterr().out) == results
  assert list(tmp_path.iterdir()) == []


def test_a_resolution_the_gan_lacks_is_refused_before_benchmarking(monkeypatch, capsys):
  """--resolutions 32 48: the 32px rows ran (minutes), then ValueError 'Unsupported resolution
  48' lost them all, with no --json written and no T5 rows."""
  from llmimg_jax.gan.common import SUPPORTED_RESOLUTIONS
  assert run.RESOLUTIONS == SUPPORTED_RESOLUTIONS
  assert ("run.py: error: argument --resolutions: invalid choice: 48 (choose from 32, 64, 128, "
          "256)" in _usage_error(monkeypatch, capsys, "--resolutions", "32", "48"))


@pytest.mark.parametrize("content, why", [
    (None, "FileNotFoundError: [Errno 2] No such file or directory: '{path}'"),
    ('{"results": []}', "no 'peak_matmul' in it"),
    ("{not json", "JSONDecodeError: Expecting property name enclosed in double quotes: line 1 "
                  "column 2 (char 1)")])
def test_render_names_a_file_it_cannot_read(monkeypatch, tmp_path, content, why):
  """Were a FileNotFoundError, KeyError or JSONDecodeError traceback."""
  path = tmp_path / "cpu.json"
  if content is not None:
    path.write_text(content)
  monkeypatch.setattr(sys, "argv", ["benchmarks/run.py", "--render", str(path)])
  with pytest.raises(SystemExit) as e:
    run.main()
  assert e.value.code == (f"benchmarks/run.py: error: --render '{path}': "
                          f"{why.format(path=path)}; name a --json file that run.py wrote.")


def test_render_prints_a_saved_run_and_refuses_json(monkeypatch, capsys):
  """--render X --json Y printed X's table and wrote nothing to Y, without a word."""
  saved = ROOT / "benchmarks" / "results" / "cpu_full_f32.json"
  monkeypatch.setattr(sys, "argv", ["benchmarks/run.py", "--render", str(saved)])
  run.main()
  assert "GAN train step (32px b32 nf32)" in capsys.readouterr().out
  error = _usage_error(monkeypatch, capsys, "--render", str(saved), "--json", "y.json")
  assert ("run.py: error: --render only prints the table of an earlier run's --json file; drop "
          "--json." in error)
