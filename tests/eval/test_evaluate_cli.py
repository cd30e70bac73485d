"""evaluate.py's command line, in subprocesses or through evaluate.main: its flag checks and
one-line errors, and --write_stats's, refused before the work where they cannot work. Its results
file (its name, --out): tests/eval/test_evaluate_results_file.py.

The run, data and evaluator are tests/eval/test_evaluate_pipeline.py's (tests/eval/conftest.py).
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.eval.utils import CONFIG, ROOT, _main, _MeanStdFeatures, _results


def test_cli_help_and_missing_workdir(tmp_path):
  out = subprocess.run([sys.executable, "evaluate.py", "--helpfull"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert "--num_samples" in out.stdout and "--inception_weights" in out.stdout
  out = subprocess.run([sys.executable, "evaluate.py"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  # one line and status 2, as flag errors (it was the 70-line help, the error at its end, status 1)
  assert out.returncode == 2 and out.stderr == (
      "evaluate.py: error: --workdir is required: the train.py run to evaluate (or --write_stats "
      "FILE, with --workdir or --config, for a real split's statistics).\n"), out.stderr
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
      f"evaluate.py: error: --out '{tmp_path}' is a folder; name the results' .json file."
  ), out.stderr
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


def test_cli_unknown_split_is_one_clear_error(run, tiny_eval, tmp_path):
  data, _ = tiny_eval
  report = tmp_path / "new" / "folder" / "r.json"
  out = subprocess.run([sys.executable, "evaluate.py", "--workdir", str(run.workdir), "--split",
                        "tset", "--data_dir", data.data_dir, "--out", str(report)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 1, out.stderr[-2000:]
  assert ("evaluate.py: error: captioned_shapes/tiny_32 has no split 'tset'; available:"
          in out.stderr)
  assert "Traceback" not in out.stderr
  # --out's folder is made before the evaluation, not found missing after it.
  assert report.parent.is_dir() and not report.exists()


def test_a_data_dir_that_cannot_hold_the_data_is_named_as_the_flag(run, tmp_path):
  """It was named data.data_dir (the run's config key, which the flag overrides)."""
  (tmp_path / "a_file").write_text("not a folder")
  assert _main("--workdir", str(run.workdir), "--data_dir", str(tmp_path / "a_file"),
               "--out", str(tmp_path / "r.json")) == (
      f"evaluate.py: error: Could not build captioned_shapes/tiny_32 in --data_dir="
      f"'{tmp_path / 'a_file'}' (NotADirectoryError: [Errno 20] Not a directory: "
      f"'{tmp_path / 'a_file' / 'downloads'}'). Check that path, or set --data_dir to a folder "
      "you can write, with room for the build.")


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
  weights = tmp_path / "pt_inception.pth"
  out = subprocess.run(
      [sys.executable, "evaluate.py", "--write_stats", str(tmp_path / "s.npz"),
       "--config=configs/folder_64.py", f"--config.data.folder={tmp_path / 'no_images'}",
       "--inception_weights", str(weights)],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 1, out.stderr[-2000:]
  assert f"evaluate.py: error: No Inception weights at {weights}" in out.stderr
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


@pytest.mark.parametrize("flag, name, args", [
    ("--write_stats", "ref.npz/", [f"--config={ROOT / 'configs/folder_64.py'}"]),
    ("--out", "results.json/", ["--workdir", "no_run"])])
def test_an_output_named_as_a_folder_is_refused_before_the_work(flag, name, args, tmp_path,
                                                                monkeypatch):
  """--write_stats ref.npz/ (or --out results.json/) was written as the file ref.npz."""
  monkeypatch.chdir(tmp_path)
  named = f"{tmp_path}/{name}"
  error = _main(flag, named, *args, "--inception_weights", "pt_inception.pth")
  assert f"{flag} {named!r} names a folder (it ends in '/')" in str(error), error
  assert not list(tmp_path.iterdir())


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
  monkeypatch.setattr(report, "evaluate_run", lambda *a, **k: given.update(k) or _results(tmp_path))
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
