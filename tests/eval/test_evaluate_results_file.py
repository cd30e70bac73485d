"""evaluate.py's results file, through evaluate.main with the evaluation stood in for: the
default file's name and what it keeps (an Inception FID that other results lack or do not
reproduce), and --out (an existing file, a link, a folder that cannot be made or written into),
refused before the evaluation where it cannot work; --write_stats's folder too."""
import io
import json
import os
import re
import sys

import pytest

from tests.eval.utils import CONFIG, _main, _results


def test_an_output_under_a_file_is_one_error_naming_its_flag(tmp_path, monkeypatch):
  """--out or --write_stats under a file (a file where its folder should be) was the bare
  "error: [Errno 17] File exists: '...'", naming neither the flag nor the path given."""
  from llmimg_jax.eval import report
  monkeypatch.setattr(report, "evaluate_run", lambda *a, **k: pytest.fail("evaluated"))
  afile = tmp_path / "afile"
  afile.write_text("not a folder")
  for where, error in ((afile / "r.json", "FileExistsError: File exists"),
                       (afile / "sub" / "r.json", "NotADirectoryError: Not a directory")):
    assert _main("--workdir", str(tmp_path / "no_run"), "--out", str(where)) == (
        f"evaluate.py: error: --out '{where}': cannot create its folder {where.parent} "
        f"({error}); name the results' .json file in a folder you can write.")
  stats = afile / "ref.npz"
  assert _main("--write_stats", str(stats), "--config", str(CONFIG), "--inception_weights",
               str(tmp_path / "w.pth")) == (
      f"evaluate.py: error: --write_stats '{stats}': cannot create its folder {afile} "
      "(FileExistsError: File exists); name the statistics' .npz file in a folder you can "
      "write.")
  assert afile.read_text() == "not a folder"


def test_default_results_file_names_the_images_scored(tmp_path, monkeypatch, capsys):
  """--num_samples 1000 on splits of 5 and 7 records scores 5 and 7 images: the file says so,
  and asking for 2000 (the same results) names the same file."""
  from llmimg_jax.eval import report
  results = {"workdir": str(tmp_path), "step": 3, "seed": 1, "dataset": "d", "splits": {
      "test": {"num_images": 5, "fid_inception": 1.0, "reference": "5 real test images"},
      "holdout": {"num_images": 7, "fid_inception": 2.0, "reference": "7 real images"}}}
  calls = []
  monkeypatch.setattr(report, "evaluate_run", lambda *a, **k: calls.append(k) or results)
  written = []
  for n in ("1000", "2000"):
    assert _main("--workdir", str(tmp_path), "--num_samples", n, "--seed", "1", "--split", "test",
                 "--split", "holdout", "--step", "3", "--batch_size", "8", "--data_dir",
                 str(tmp_path / "tfds")) is None
    written.append(capsys.readouterr().out.splitlines()[-1])
  name = tmp_path / "eval_3_test+holdout_n5+7_seed1.json"
  assert written == [f"Wrote {name}"] * 2
  # The evaluation is of the step, seed and number of images asked for (and the file names),
  # on the splits and data asked for.
  assert [(k["step"], k["seed"], k["num_samples"]) for k in calls] == [(3, 1, 1000),
                                                                       (3, 1, 2000)]
  assert all((k["splits"], k["batch_size"], k["data_dir"]) == (
      ["test", "holdout"], 8, str(tmp_path / "tfds")) for k in calls), calls
  assert json.loads(name.read_text())["splits"]["holdout"]["num_images"] == 7


def test_an_unwritable_results_folder_is_refused_before_the_evaluation(tmp_path, monkeypatch):
  """The results' folder (the workdir, or --out's) is checked for writing before the evaluation
  (hours at 30k samples) runs, not found unwritable when its results are written."""
  from llmimg_jax.eval import report
  from tests.train.cli_utils import unwritable
  evaluated = []
  monkeypatch.setattr(report, "evaluate_run",
                      lambda *a, **k: evaluated.append(a) or _results(tmp_path))
  locked = tmp_path / "locked"
  locked.mkdir()
  cases = {"--workdir": (["--workdir", str(locked)], "pass a writable --out"),
           f"--out '{locked / 'results.json'}'": (
               ["--workdir", str(tmp_path), "--out", str(locked / "results.json")],
               "name the results' .json file in a folder you can write")}
  with unwritable(locked):
    for named, (args, fix) in cases.items():
      error = _main(*args)  # root's immutable folder: not permitted; another's: denied
      assert error in (f"evaluate.py: error: {named}: cannot write into {locked} (PermissionError: "
                       f"{why}); {fix}." for why in ("Operation not permitted",
                                                      "Permission denied")), error
  assert evaluated == [] and list(locked.iterdir()) == []


def test_a_results_folder_no_file_can_be_made_in_is_refused_before_the_evaluation(
    tmp_path, monkeypatch):
  """A folder whose mode allows writing but where the kernel refuses a new file (/proc, /sys):
  os.access passed it as root (seen: --out /proc/llmimg_r.json), so the evaluation ran and its
  results could not be written. Now a file is made and removed there first: --out in it or
  linked into it, --write_stats, and a --workdir there (the default file's folder) are refused,
  each naming its flag, the folder and the fix."""
  from llmimg_jax.eval import report
  monkeypatch.setattr(report, "evaluate_run", lambda *a, **k: pytest.fail("evaluated"))
  (tmp_path / "link.json").symlink_to("/proc/llmimg_nope.json")
  (tmp_path / "run").symlink_to("/proc")  # a run in a folder no file can be made in
  results, stats = "name the results' .json file in a folder you can write", (
      "name the statistics' .npz file in a folder you can write")
  cases = {"--out '/proc/llmimg_nope.json'": (
               ["--workdir", str(tmp_path), "--out", "/proc/llmimg_nope.json"], "/proc", results),
           f"--out '{tmp_path / 'link.json'}'": (
               ["--workdir", str(tmp_path), "--out", str(tmp_path / "link.json")], "/proc",
               results),
           "--workdir": (["--workdir", str(tmp_path / "run")], tmp_path / "run",
                         "pass a writable --out"),
           "--write_stats '/proc/llmimg_nope.npz'": (
               ["--write_stats", "/proc/llmimg_nope.npz", "--config", str(CONFIG),
                "--inception_weights", str(tmp_path / "w.pth")], "/proc", stats)}
  for named, (args, folder, fix) in cases.items():
    error = _main(*args)
    assert re.fullmatch(rf"evaluate\.py: error: {re.escape(named)}: cannot write into "
                        rf"{re.escape(str(folder))} \((FileNotFoundError|PermissionError): .+\); "
                        rf"{re.escape(fix)}\.", error), error
  assert not list(tmp_path.glob("**/.write_test.*"))


def test_an_existing_out_file_is_refused_before_the_evaluation(tmp_path, monkeypatch, spare):
  """--out replaced an existing file without a word (--write_stats refuses one unless
  --overwrite_stats): it is refused before the evaluation unless --overwrite_out, and a file
  written meanwhile is not replaced either; the results, printed as a table only, were then lost
  as JSON: they are kept in a spare file, which the error names."""
  from absl import app
  from llmimg_jax.eval import report
  evaluated = []
  results = _results(tmp_path)
  monkeypatch.setattr(report, "evaluate_run", lambda *a, **k: evaluated.append(a) or results)

  def main(*flags: str) -> int | str | None:
    return _main("--workdir", str(tmp_path), *flags)

  out = tmp_path / "r.json"
  out.write_text("earlier results")
  refused = (f"evaluate.py: error: --out '{out}' exists; remove it, name a new file, or pass "
             "--overwrite_out to replace it.")
  assert main("--out", str(out)) == refused
  assert evaluated == [] and out.read_text() == "earlier results"
  assert main("--out", str(out), "--overwrite_out") is None
  assert len(evaluated) == 1 and json.loads(out.read_text())["step"] == 3
  # Another evaluation's file, written while this one ran: kept, this one's results in a spare.
  later = tmp_path / "later.json"
  monkeypatch.setattr(report, "evaluate_run",
                      lambda *a, **k: later.write_text("another evaluation's") and results)
  error = main("--out", str(later))
  [saved] = spare.iterdir()
  assert error == (f"evaluate.py: error: could not write --out '{later}' (FileExistsError: a file "
                   f"was written there during the evaluation); the results are in {saved}.")
  assert later.read_text() == "another evaluation's" and json.loads(saved.read_text()) == results
  with pytest.raises(app.UsageError, match=r"^--overwrite_out only applies with --out \(it lets "
                     r"that replace an existing results file; the default file is replaced by "
                     r"the same evaluation's results\); drop it, or pass --out\.$"):
    main("--overwrite_out")


def test_an_out_link_is_written_through_to_its_target(tmp_path, monkeypatch, spare):
  """--out (or a folder of it) that is a link to a missing file or folder was a raw "[Errno 17]
  File exists" (the folder's link) or refused as existing, and --overwrite_out replaced the link
  itself, leaving its target stale. The results go to the link's target, as the shell's `>`
  writes them; an existing target is refused unless --overwrite_out, the link is kept."""
  from llmimg_jax.eval import report
  results = _results(tmp_path)
  monkeypatch.setattr(report, "evaluate_run", lambda *a, **k: results)

  def main(*flags: str) -> int | str | None:
    return _main("--workdir", str(tmp_path), *flags)

  to_file = tmp_path / "r.json"  # a link to a missing file, in a missing folder
  to_file.symlink_to(tmp_path / "results" / "target.json")
  to_folder = tmp_path / "linked"  # a link to a missing folder, named as --out's folder
  to_folder.symlink_to("new_folder")
  for out, target in [(to_file, tmp_path / "results" / "target.json"),
                      (to_folder / "r.json", tmp_path / "new_folder" / "r.json")]:
    assert main("--out", str(out)) is None
    assert json.loads(target.read_text())["step"] == 3 and out.read_text() == target.read_text()
    target.write_text("earlier results")  # now an existing file: refused, then replaced
    link = f" (a link to {target})" if out.is_symlink() else ""  # or in a linked folder
    assert main("--out", str(out)) == (f"evaluate.py: error: --out '{out}'{link} exists; remove "
                                       "it, name a new file, or pass --overwrite_out to replace "
                                       "it.")
    assert target.read_text() == "earlier results"
    assert main("--out", str(out), "--overwrite_out") is None
    assert json.loads(target.read_text())["step"] == 3
  assert to_file.is_symlink() and to_folder.is_symlink()
  # The late recheck names the link as the first check does (it named the target alone).
  target = tmp_path / "results" / "target.json"
  target.unlink()
  monkeypatch.setattr(report, "evaluate_run",
                      lambda *a, **k: target.write_text("another evaluation's") and results)
  error = main("--out", str(to_file))
  [saved] = spare.iterdir()
  assert error == (f"evaluate.py: error: could not write --out '{to_file}' (a link to {target}) "
                   "(FileExistsError: a file was written there during the evaluation); the "
                   f"results are in {saved}.")
  loop = tmp_path / "loop.json"
  loop.symlink_to(loop.name)
  assert main("--out", str(loop)) == (f"evaluate.py: error: --out {str(loop)!r} leads to itself "
                                      "through a link (a loop); name the results' .json file.")
  assert loop.is_symlink() and not (tmp_path / "results" / "loop.json").exists()


@pytest.mark.timeout(60)  # it waited forever
def test_a_default_file_that_is_a_pipe_or_a_loop_is_not_replaced(tmp_path, monkeypatch, spare):
  """The default results file is named after the evaluation, so not checked before it as --out is.
  One that was a named pipe (or a link to one) was read for an Inception FID it might hold, which
  waited for a writer forever after the evaluation; a link leading to itself was replaced by the
  results (as root, a link to /dev/null would have replaced /dev/null). Now neither is read nor
  replaced: the results go to a spare file, which the error names."""
  from llmimg_jax.eval import report
  results = _results(tmp_path)
  monkeypatch.setattr(report, "evaluate_run", lambda *a, **k: results)
  default, pipe = tmp_path / "eval_3_test_n5_seed0.json", tmp_path / "pipe"
  os.mkfifo(pipe)
  for make, link in ((lambda: os.mkfifo(default), ""),
                     (lambda: default.symlink_to(pipe), f" (a link to {pipe})"),
                     (lambda: default.symlink_to(default.name), "")):
    make()
    error = _main("--workdir", str(tmp_path), "--split", "test")
    [saved] = spare.iterdir()
    assert error == (f"evaluate.py: error: could not write the results file {default}{link} "
                     "(OSError: a loop of links, a folder, a pipe or a device: not a file); the "
                     f"results are in {saved}.")
    assert json.loads(saved.read_text()) == results
    assert default.is_symlink() or default.is_fifo()
    default.unlink()
    saved.unlink()
  assert pipe.is_fifo()


def _wrote_or_kept(results: dict, workdir, monkeypatch, capsys) -> list[str]:
  """evaluate.py's lines on the files it wrote or kept, with `results` as the evaluation's."""
  from llmimg_jax.eval import report
  monkeypatch.setattr(report, "evaluate_run", lambda *a, **k: results)
  assert _main("--workdir", str(workdir), "--split", "test") is None
  return [line for line in capsys.readouterr().out.splitlines()
          if line.startswith(("Wrote", "Kept"))]


def test_the_default_file_keeps_an_inception_fid_from_results_without_it(tmp_path, monkeypatch,
                                                                          capsys):
  """The default file was replaced by any evaluation of the same step, splits, images and seed:
  one without --inception_weights (no torch, minutes instead of hours) lost the Inception FID.
  Such results now go beside it, to ..._no_inception.json; results with it replace it."""
  from llmimg_jax.eval import report
  score = {"caption_accuracy": 0.5, **{m: 0.5 for m in report.ATTRIBUTE_COLUMNS}}
  row = {"num_images": 5, "generated": score, "real": score, "fid_indomain": 1.0,
         "fid_indomain_floor": 0.5}
  shapes = {"workdir": str(tmp_path), "step": 3, "seed": 0, "dataset": "captioned_shapes/x",
            "evaluator": {}, "splits": {"test": row}}
  with_fid = shapes | {"splits": {"test": row | {"fid_inception": 20.0,
                                                 "fid_inception_floor": 2.0}}}

  def main(results: dict) -> list[str]:
    return _wrote_or_kept(results, tmp_path, monkeypatch, capsys)

  default = tmp_path / "eval_3_test_n5_seed0.json"
  beside = tmp_path / "eval_3_test_n5_seed0_no_inception.json"
  assert main(shapes) == [f"Wrote {default}"]
  assert main(with_fid) == [f"Wrote {default}"]  # more metrics: replaced
  assert json.loads(default.read_text())["splits"]["test"]["fid_inception"] == 20.0
  kept = [f"Kept {default}: it holds the Inception FID (test), which these results (without "
          f"--inception_weights) lack; pass --out {default} --overwrite_out to replace it.",
          f"Wrote {beside}"]
  for _ in range(2):  # and the second time, the results without it replace their own file
    assert main(shapes) == kept
    assert json.loads(default.read_text())["splits"]["test"]["fid_inception"] == 20.0
    assert "fid_inception" not in json.loads(beside.read_text())["splits"]["test"]
  assert main(with_fid) == [f"Wrote {default}"]


def test_the_default_file_keeps_an_inception_fid_against_another_reference(tmp_path, monkeypatch,
                                                                           capsys):
  """An evaluation against other --ref_stats (or none: the real images) or other weights wrote
  the same default file and replaced an Inception FID it does not reproduce (DF-GAN's protocol
  at 30,000 images: hours). Its results now go beside it, named by their reference."""
  row = {"num_images": 5, "fid_inception": 20.0, "reference": "coco.npz"}
  weights = {"path": "w.pth", "sha256": "ab" * 32}
  coco = {"path": "coco.npz", "sha256": "cd" * 32}
  base = {"workdir": str(tmp_path), "step": 3, "seed": 0, "dataset": "d",
          "inception_weights": weights}
  with_coco = base | {"ref_stats": coco, "splits": {"test": row}}
  with_real = base | {"splits": {"test": row | {"fid_inception": 30.0, "reference": "real"}}}

  def main(results: dict) -> list[str]:
    return _wrote_or_kept(results, tmp_path, monkeypatch, capsys)

  default = tmp_path / "eval_3_test_n5_seed0.json"
  beside = tmp_path / "eval_3_test_n5_seed0_ref-real.json"
  assert main(with_coco) == [f"Wrote {default}"]
  assert main(with_coco) == [f"Wrote {default}"]  # the same evaluation: replaced
  for _ in range(2):  # and the second time, the other evaluation replaces its own file
    lines = main(with_real)
    assert lines[0].startswith(f"Kept {default}: its Inception FID (test) is against other "
                               "reference statistics") and lines[1:] == [f"Wrote {beside}"]
    assert json.loads(default.read_text())["splits"]["test"]["fid_inception"] == 20.0
    assert json.loads(beside.read_text())["splits"]["test"]["fid_inception"] == 30.0
  other_weights = with_coco | {"inception_weights": weights | {"sha256": "ef" * 32}}
  weights_beside = tmp_path / "eval_3_test_n5_seed0_weights-efefefef.json"
  assert main(other_weights)[1:] == [f"Wrote {weights_beside}"]


class _ReaderGone(io.RawIOBase):
  def writable(self) -> bool:
    return True

  def write(self, b) -> int:
    raise BrokenPipeError(32, "Broken pipe")


def test_a_stdout_that_fails_loses_no_results(tmp_path, monkeypatch):
  """The table was printed before the results file was written: with stdout's pipe gone (or a
  full disk) evaluate.py ended in 'error: [Errno 32] Broken pipe', exit 1, no file written. Now
  the file is written first; and with the tools' guarded stdout the print fails quietly."""
  from llmimg_jax import console
  from llmimg_jax.eval import report
  monkeypatch.setattr(report, "evaluate_run", lambda *a, **k: _results(tmp_path))
  results = tmp_path / "eval_3_test_n5_seed0.json"
  monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(_ReaderGone(), write_through=True))
  assert _main("--workdir", str(tmp_path)) == "evaluate.py: error: [Errno 32] Broken pipe"
  assert json.loads(results.read_text())["step"] == 3
  results.unlink()
  console.guard_stdout("evaluate.py")  # as evaluate.py's __main__ does
  assert _main("--workdir", str(tmp_path)) is None
  assert json.loads(results.read_text())["step"] == 3
  assert isinstance(console.stdout_error(), BrokenPipeError)
