"""evaluate.py's command line, in subprocesses or through evaluate.main: its flag checks and
one-line errors, --write_stats, and the results file (its name, its folder), refused before the
evaluation where they cannot work.

The run, data and evaluator are tests/eval/test_evaluate_pipeline.py's (tests/eval/conftest.py).
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.eval.utils import _MeanStdFeatures
from tests.sample.conftest import run  # noqa: F401  (run: session fixture)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "shapes_quick.py"


def _main(*args: str) -> int | str | None:
  """evaluate.main under these flags: its SystemExit's code (a one-line error), or None."""
  import evaluate
  evaluate.FLAGS(["evaluate.py", *args])
  try:
    evaluate.main([])
  except SystemExit as e:
    return e.code
  finally:
    evaluate.FLAGS.unparse_flags()
  return None


def test_cli_help_and_missing_workdir(tmp_path):
  out = subprocess.run([sys.executable, "evaluate.py", "--helpfull"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert "--num_samples" in out.stdout and "--inception_weights" in out.stdout
  out = subprocess.run([sys.executable, "evaluate.py"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  # one line and status 2, as flag errors (it was the 70-line help, the error at its end, status 1)
  assert out.returncode == 2 and out.stderr == "evaluate.py: error: --workdir is required.\n"
  out = subprocess.run([sys.executable, "evaluate.py", "--write_stats", str(tmp_path / "r.npz"),
                        "--config", str(CONFIG)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 2 and out.stderr.splitlines()[-1] == (
      "evaluate.py: error: --write_stats needs --inception_weights."), out.stderr
  assert "flags:" not in out.stderr
  out = subprocess.run([sys.executable, "evaluate.py", "--workdir", "x", "--num_samples", "0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and "--num_samples=0: 0 is not integer >= 2" in out.stderr, out.stderr
  out = subprocess.run([sys.executable, "evaluate.py", "--workdir", "x", "--config",
                        "configs/shapes_quick.py", "--stats_split", "test"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and (
      "--config, --stats_split only apply with --write_stats" in out.stderr), out.stderr
  out = subprocess.run([sys.executable, "evaluate.py", "--workdir", "x", "--stats_split", "test"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and (
      "--stats_split only applies with --write_stats" in out.stderr), out.stderr
  out = subprocess.run([sys.executable, "evaluate.py", "--workdir", "x", "--seed", str(2**32)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and "--seed=4294967296: 4294967296 is not" in out.stderr, out.stderr
  # An --out that names a folder is refused before the evaluation (of a run that does not exist).
  out = subprocess.run([sys.executable, "evaluate.py", "--workdir", str(tmp_path / "no_run"),
                        "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 1 and out.stderr.strip().splitlines()[-1] == (
      f"evaluate.py: error: --out '{tmp_path}' is a folder; name the results' .json file."), out.stderr
  out = subprocess.run([sys.executable, "evaluate.py", "--workdir", str(tmp_path / "no_run"),
                        "--out", " "], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 1 and out.stderr.strip().splitlines()[-1] == (
      "evaluate.py: error: --out is blank; name the results' .json file."), out.stderr


def test_a_stray_argument_is_one_clear_error(tmp_path):
  """absl's boolean flags take no separate value: `--overwrite_out false` set the flag, and the
  'false' left over was dropped, so an existing results file was replaced."""
  out = subprocess.run([sys.executable, "evaluate.py", "--workdir", str(tmp_path), "--out",
                        str(tmp_path / "r.json"), "--overwrite_out", "false"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and out.stderr == (
      "evaluate.py: error: Unexpected argument(s) ['false']: evaluate.py takes flags only. Give a "
      "value as --name=value, and a boolean flag as --name or --noname (--nooverwrite_out, or "
      "--overwrite_out=false), not '--name false'.\n"), out.stderr


def test_cli_unknown_split_is_one_clear_error(run, tiny_eval, tmp_path):  # noqa: F811
  data, _ = tiny_eval
  report = tmp_path / "new" / "folder" / "r.json"
  out = subprocess.run([sys.executable, "evaluate.py", "--workdir", str(run.workdir), "--split",
                        "tset", "--data_dir", data.data_dir, "--out", str(report)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 1, out.stderr[-2000:]
  assert "evaluate.py: error: captioned_shapes/tiny_32 has no split 'tset'; available:" in out.stderr
  assert "Traceback" not in out.stderr
  # --out's folder is made before the evaluation, not found missing after it.
  assert report.parent.is_dir() and not report.exists()


def test_write_stats_of_a_folder_config(folder_run, tmp_path, monkeypatch):
  """--write_stats with --config and a --config.data.folder override: the train split by default
  (a folder has no test split), the .npz at exactly the path given."""
  from llmimg_jax.eval import fid, inception
  monkeypatch.setattr(inception, "InceptionFeatures", _MeanStdFeatures)
  folder = json.loads((folder_run.workdir / "config.json").read_text())["data"]["folder"]
  out = tmp_path / "new" / "folder_stats"  # no .npz suffix; its folder is made
  monkeypatch.setenv("HOME", str(tmp_path))  # "~" as a shell leaves it after "--write_stats="
  argv = ["evaluate.py", "--write_stats=~/new/folder_stats",
          f"--config={ROOT / 'configs/folder_64.py'}",
          f"--config.data.folder={folder}", "--data_dir", str(tmp_path / "tfds"),
          "--inception_weights", "inception.pth", "--num_samples", "6"]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
  assert _main(*argv[1:]) is None
  mu, sigma = fid.load_statistics(out)
  assert mu.shape == (6,) and sigma.shape == (6, 6)
  assert int(np.load(out)["num_images"]) == 6


def test_write_stats_checks_the_weights_before_the_data(tmp_path):
  out = subprocess.run(
      [sys.executable, "evaluate.py", "--write_stats", str(tmp_path / "s.npz"),
       "--config=configs/folder_64.py", f"--config.data.folder={tmp_path / 'no_images'}",
       "--inception_weights", str(tmp_path / "pt_inception.pth")],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 1, out.stderr[-2000:]
  assert f"evaluate.py: error: No Inception weights at {tmp_path / 'pt_inception.pth'}" in out.stderr
  assert "Traceback" not in out.stderr
  out = subprocess.run(  # a --config.KEY naming no key: one line, as in train.py
      [sys.executable, "evaluate.py", "--write_stats", str(tmp_path / "s.npz"),
       "--config=configs/folder_64.py", "--config.data.foldr=x"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert "evaluate.py: error: unknown config key 'foldr'" in out.stderr


def test_write_stats_to_a_folder_is_refused_before_the_work(tmp_path):
  """It failed with IsADirectoryError (FileNotFoundError for a missing folder) only once every
  image's Inception features were computed."""
  out = subprocess.run(
      [sys.executable, "evaluate.py", "--write_stats", str(tmp_path),
       "--config=configs/folder_64.py", f"--config.data.folder={tmp_path / 'no_images'}",
       "--inception_weights", str(tmp_path / "pt_inception.pth")],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert (f"evaluate.py: error: --write_stats '{tmp_path}' is a folder; name the statistics' "
          ".npz file.") in out.stderr


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


def test_write_stats_refuses_a_workdir_and_a_config_together(tmp_path, monkeypatch):
  """With both, the run's data config was read and --config (and its --config.* overrides, e.g.
  another data.folder) ignored without a word."""
  from absl import app
  argv = ["evaluate.py", "--write_stats", str(tmp_path / "s.npz"), "--workdir",
          str(tmp_path / "no_run"), f"--config={CONFIG}", "--config.data.data_dir=/elsewhere",
          "--inception_weights", str(tmp_path / "w.pth")]
  monkeypatch.setattr(sys, "argv", argv)  # where ml_collections finds the --config.* overrides
  with pytest.raises(app.UsageError, match=r"^--write_stats reads the data of --workdir \(a "
                     r"run's\) or of --config, not both: drop one\.$"):
    _main(*argv[1:])
  assert not (tmp_path / "s.npz").exists()


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
  monkeypatch.setattr(report, "evaluate_run", lambda *a, **k: evaluated.append(a) or {
      "workdir": str(tmp_path), "step": 3, "seed": 0, "dataset": "d", "splits": {"test": {
          "num_images": 5, "fid_inception": 1.0, "reference": "5 real test images"}}})
  locked = tmp_path / "locked"
  locked.mkdir()
  cases = {"--workdir": ["--workdir", str(locked)],
           "--out": ["--workdir", str(tmp_path), "--out", str(locked / "results.json")]}
  with unwritable(locked):
    for flag, args in cases.items():
      assert _main(*args) == (f"evaluate.py: error: {flag}: cannot write into {locked}; pass a "
                              "writable --out.")
  assert evaluated == [] and list(locked.iterdir()) == []


def test_an_existing_out_file_is_refused_before_the_evaluation(tmp_path, monkeypatch):
  """--out replaced an existing file without a word (--write_stats refuses one unless
  --overwrite_stats): it is refused before the evaluation unless --overwrite_out, and a file
  written meanwhile is not replaced either."""
  from absl import app
  from llmimg_jax.eval import report
  evaluated = []
  results = {"workdir": str(tmp_path), "step": 3, "seed": 0, "dataset": "d", "splits": {"test": {
      "num_images": 5, "fid_inception": 1.0, "reference": "5 real test images"}}}
  monkeypatch.setattr(report, "evaluate_run", lambda *a, **k: evaluated.append(a) or results)

  def main(*flags: str) -> int | str | None:
    return _main("--workdir", str(tmp_path), *flags)

  out = tmp_path / "r.json"
  out.write_text("earlier results")
  refused = (f"evaluate.py: error: --out: {out} exists; remove it, name a new file, or pass "
             "--overwrite_out to replace it.")
  assert main("--out", str(out)) == refused
  assert evaluated == [] and out.read_text() == "earlier results"
  assert main("--out", str(out), "--overwrite_out") is None
  assert len(evaluated) == 1 and json.loads(out.read_text())["step"] == 3
  # Another evaluation's file, written while this one ran: kept, this one's results are printed.
  later = tmp_path / "later.json"
  monkeypatch.setattr(report, "evaluate_run",
                      lambda *a, **k: later.write_text("another evaluation's") and results)
  assert main("--out", str(later)) == refused.replace(str(out), str(later))
  assert later.read_text() == "another evaluation's"
  with pytest.raises(app.UsageError, match=r"^--overwrite_out only applies with --out \(it lets "
                     r"that replace an existing results file; the default file is replaced by "
                     r"the same evaluation's results\); drop it, or pass --out\.$"):
    main("--overwrite_out")


def test_an_out_link_is_written_through_to_its_target(tmp_path, monkeypatch):
  """--out (or a folder of it) that is a link to a missing file or folder was a raw "[Errno 17]
  File exists" (the folder's link) or refused as existing, and --overwrite_out replaced the link
  itself, leaving its target stale. The results go to the link's target, as the shell's `>`
  writes them; an existing target is refused unless --overwrite_out, the link is kept."""
  from llmimg_jax.eval import report
  results = {"workdir": str(tmp_path), "step": 3, "seed": 0, "dataset": "d", "splits": {"test": {
      "num_images": 5, "fid_inception": 1.0, "reference": "5 real test images"}}}
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
    assert main("--out", str(out)) == (f"evaluate.py: error: --out: {target} exists; remove it, "
                                       "name a new file, or pass --overwrite_out to replace it.")
    assert target.read_text() == "earlier results"
    assert main("--out", str(out), "--overwrite_out") is None
    assert json.loads(target.read_text())["step"] == 3
  assert to_file.is_symlink() and to_folder.is_symlink()
  loop = tmp_path / "loop.json"
  loop.symlink_to(loop.name)
  assert main("--out", str(loop)) == (f"evaluate.py: error: --out {str(loop)!r} is a link that "
                                      "leads to itself (a loop); name the results' .json file.")
  assert loop.is_symlink() and not (tmp_path / "results" / "loop.json").exists()


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


def test_a_path_of_a_user_without_a_home_is_one_line(tmp_path, monkeypatch):
  """A ~user path flag with no such user was pathlib's RuntimeError, a traceback."""
  no_user = ("evaluate.py: error: {} '~no_such_user_llmimg/{}': ~no_such_user_llmimg is no user's "
             "home directory (no user 'no_such_user_llmimg' here); write the path out in full, or "
             "~/ for your own home.")
  stats = ["--inception_weights", str(tmp_path / "w.pth")]
  cases = [(["--workdir", "~no_such_user_llmimg/run"], ("--workdir", "run")),
           (["--workdir", "~no_such_user_llmimg/run", "--out", str(tmp_path / "r.json")],
            ("--workdir", "run")),  # read by the evaluation
           (["--workdir", str(tmp_path), "--out", "~no_such_user_llmimg/r.json"],
            ("--out", "r.json")),
           (["--write_stats", "~no_such_user_llmimg/s.npz", f"--config={CONFIG}", *stats],
            ("--write_stats", "s.npz")),
           (["--write_stats", str(tmp_path / "s.npz"), "--workdir", "~no_such_user_llmimg/run",
             *stats], ("--workdir", "run"))]
  for args, named in cases:
    assert _main(*args) == no_user.format(*named)
  assert list(tmp_path.iterdir()) == []


def test_weights_and_ref_stats_paths_expand_the_home_as_every_path_flag(tmp_path, monkeypatch):
  """--inception_weights=~/w.pth and --ref_stats=~/s.npz (no shell expands ~ after '=') were read
  as a folder named '~': 'No FID statistics at ~/s.npz', where --workdir, --out and --write_stats
  expand it."""
  from llmimg_jax.eval import inception, report
  monkeypatch.setenv("HOME", str(tmp_path))
  given = {}
  monkeypatch.setattr(report, "evaluate_run", lambda *a, **k: given.update(k) or {
      "workdir": str(tmp_path), "step": 3, "seed": 0, "dataset": "d", "splits": {"test": {
          "num_images": 5, "fid_inception": 1.0, "reference": "5 real test images"}}})
  assert _main("--workdir", str(tmp_path), "--inception_weights=~/w.pth",
               "--ref_stats=~/s.npz") is None
  assert (given["inception_weights"], given["ref_stats"]) == (str(tmp_path / "w.pth"),
                                                              str(tmp_path / "s.npz"))

  def weights(path):
    given["write_stats_weights"] = path
    raise ValueError("stop")
  monkeypatch.setattr(inception, "InceptionFeatures", weights)
  assert _main("--write_stats", str(tmp_path / "s.npz"), f"--config={CONFIG}",
               "--inception_weights=~/w.pth") == "evaluate.py: error: stop"
  assert given["write_stats_weights"] == str(tmp_path / "w.pth")


def test_a_blank_file_flag_is_refused_before_any_work(tmp_path, monkeypatch):
  """--ref_stats=$STATS with STATS unset took the FID against the run's own real images instead of
  the reference statistics, and a blank --inception_weights left out the standard FID, without a
  word."""
  from absl import app
  from llmimg_jax.eval import report
  monkeypatch.setattr(report, "evaluate_run", lambda *a, **k: pytest.fail("evaluated"))
  for flag in ("ref_stats", "inception_weights"):
    with pytest.raises(app.UsageError, match=rf"^--{flag} is blank \(e\.g\. --{flag}=\$FILE with "
                       r"FILE unset\); name the file, or drop the flag\.$"):
      _main("--workdir", str(tmp_path), "--inception_weights=w.pth", f"--{flag}=")
  assert list(tmp_path.iterdir()) == []
  # --write_stats=$FILE with FILE unset evaluated a run instead: "--workdir is required"
  with pytest.raises(app.UsageError, match=r"^--write_stats is blank \(e\.g\. --write_stats="):
    _main("--write_stats=", f"--config={CONFIG}", "--inception_weights=w.pth")
  # --data_dir=$DIR with DIR unset read the run's data_dir; --stats_split= the test split
  with pytest.raises(app.UsageError, match=r"^--data_dir is blank \(e\.g\. --data_dir=\$DIR "
                     r"with DIR unset\); name the TFDS data directory, or drop the flag\.$"):
    _main("--workdir", str(tmp_path), "--data_dir=")
  with pytest.raises(app.UsageError, match=r"^--stats_split is blank \(e\.g\. --stats_split="
                     r"\$SPLIT with SPLIT unset\); name the split, or drop the flag\.$"):
    _main("--write_stats", str(tmp_path / "s.npz"), f"--config={CONFIG}",
          "--inception_weights=w.pth", "--stats_split=")
  assert list(tmp_path.iterdir()) == []


def test_out_of_memory_is_one_line_naming_the_sizes(tmp_path, monkeypatch):
  """--batch_size 100000 ended in XLA's RESOURCE_EXHAUSTED traceback (sample.py says one line);
  another runtime error is still raised as it is."""
  import jax
  from llmimg_jax.eval import report
  oom = "RESOURCE_EXHAUSTED: Out of memory allocating 9 bytes."
  errors = iter([jax.errors.JaxRuntimeError(why) for why in (oom, "INTERNAL: something else")])

  def evaluate_run(*args, **kwargs):
    raise next(errors)
  monkeypatch.setattr(report, "evaluate_run", evaluate_run)
  assert _main("--workdir", str(tmp_path)) == (
      f"evaluate.py: error: out of memory ({oom}); lower --batch_size or --num_samples.")
  with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):  # not memory: as it is
    _main("--workdir", str(tmp_path))
  assert list(tmp_path.iterdir()) == []


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
