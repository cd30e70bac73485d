r"""Evaluates a train.py run: caption accuracy and in-domain FID on captioned_shapes, and the
standard (Inception, DF-GAN protocol) FID, the only metric for runs on other data.

  python evaluate.py --workdir runs/shapes_quick                        # test + holdout, JSON
  python evaluate.py --workdir runs/x --split holdout --num_samples 500 --step 2000 --out r.json
  python evaluate.py --workdir runs/x --inception_weights pt_inception-2015-12-05-6726825d.pth \
      --ref_stats coco_val256.npz                                       # + standard FID
  python evaluate.py --workdir runs/coco --inception_weights pt_inception-...pth  # COCO/folder
  python evaluate.py --write_stats ref.npz --config configs/shapes_quick.py --stats_split test \
      --inception_weights pt_inception-2015-12-05-6726825d.pth          # reference mu/sigma
  python evaluate.py --write_stats ref.npz --config configs/folder_64.py \
      --config.data.folder=DIR --inception_weights pt_inception-...pth   # a folder's train split

Generated images use the split's captions (the first caption of records [0, N)) with noise
z_i = normal(fold_in(key(seed), i)). In-domain FID compares evaluator features of the generated
images with a real set of the same distribution (train records for `test`, further holdout records
for `holdout`); the floor is the same FID for the split's own real images [0, N).
Standard FID: pytorch-fid's InceptionV3 in Flax, images bilinearly resized to 299. FID is biased
upward at small image counts: published numbers (DF-GAN's 19.3 on COCO) use ~30,000 generated
images; a split gives at most one image per record (coco_captions' test split: 5,000), and the
default 1000 compares checkpoints of one run, not papers. With
--ref_stats written from the split being scored, the real images' "floor" is omitted (those
records, or a superset, against themselves).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from llmimg_jax import cli, console
from llmimg_jax import output_files, platforms

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train.py workdir (checkpoints + config).")
flags.DEFINE_multi_string("split", None, "Split(s) whose captions are used; repeat the flag for "
                          "several. Default: test and holdout (captioned_shapes; holdout where "
                          "the build has it), else test, else train.")
flags.DEFINE_integer("num_samples", 1000, "Images per split (capped by the split's size; "
                     "holdout's by half of it, the other half being the in-domain FID's "
                     "reference).", lower_bound=2)  # a covariance needs two
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_string("out", None, "JSON file for the results (default: <workdir>/"
                    "eval_<step>_<splits>_n<images scored>_seed<seed>.json, or "
                    "..._no_inception.json, ..._ref-<sha256[:8]>.json or "
                    "..._weights-<sha256[:8]>.json (both: _ref-<>_weights-<>) beside one "
                    "holding an Inception FID that these results lack or take against another "
                    "reference or other weights; "
                    "NaN is written null). "
                    "An existing file is refused before any work unless --overwrite_out; a link is "
                    "written through to its target.")
flags.DEFINE_bool("overwrite_out", False, "Let --out replace an existing file.")
flags.DEFINE_integer("seed", 0, "Noise seed.", lower_bound=0, upper_bound=2**32 - 1)
flags.DEFINE_integer("batch_size", 64, "Generation batch size.", lower_bound=1)
flags.DEFINE_string("data_dir", None, "Override the run's config.data.data_dir.")
flags.DEFINE_string("inception_weights", None,
                    "pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or its .npz): adds the "
                    "standard FID. Get it from https://github.com/mseitzer/pytorch-fid/releases")
flags.DEFINE_string("ref_stats", None, "An .npz of mu/sigma for the standard FID (DF-GAN's); "
                    "default: computed from the real reference set.")
flags.DEFINE_string("write_stats", None, "Write Inception mu/sigma of the first --num_samples "
                    "images of a real split to this .npz and exit (needs --inception_weights and "
                    "--workdir or --config). An existing file is refused before any work unless "
                    "--overwrite_stats.")
flags.DEFINE_bool("overwrite_stats", False, "Let --write_stats replace an existing file.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file for --write_stats without a workdir; values are overridden as "
    "in train.py, e.g. --config.data.folder=DIR.")
flags.DEFINE_string("stats_split", None, "The split --write_stats reads (default: test where "
                    "the dataset has one, else train).")
# Refused with --write_stats, which would ignore them (`--split holdout` writing test statistics
# without a word).
_EVALUATION_ONLY = ("split", "step", "seed", "out", "overwrite_out", "ref_stats",
                    "batch_size")


def _data_config():
  if FLAGS.workdir:
    cfg = _run_config(FLAGS.workdir)
  elif _CONFIG.value is not None:
    cfg = _CONFIG.value
  else:
    raise app.UsageError("Give --workdir (a train.py run) or --config.")
  data = cfg.data
  if FLAGS.data_dir:
    data.data_dir = FLAGS.data_dir
  return data


def _run_config(workdir: str):
  """The config a train.py run saved in WORKDIR/config.json; ValueError naming the workdir (a
  CheckpointError naming the run's for a folder in its checkpoints/)."""
  import ml_collections
  from llmimg_jax.sample.restore import refuse_checkpoint_folder
  path = output_files.flag_path(workdir, "--workdir") / "config.json"
  try:
    saved = json.loads(path.read_text())
  except (OSError, ValueError) as e:  # missing, not a folder, not JSON
    refuse_checkpoint_folder(path.parent, step_flag=False)  # the statistics take no --step
    why = " ".join(str(getattr(e, "strerror", None) or e).split())
  else:
    if isinstance(saved, dict) and isinstance(saved.get("data"), dict):
      return ml_collections.ConfigDict(saved)
    why = "no data section: not a train.py run's config, e.g. a model's"
  raise ValueError(f"--workdir {workdir}: cannot read the run's config {path} ({why}); pass "
                   "the --workdir of a train.py run, or --config with a config file.") from None


def _write_stats() -> None:
  from llmimg_jax.data.pipeline import dataset_id, load_source
  from llmimg_jax.eval import fid
  from llmimg_jax.eval.inception import InceptionFeatures
  from llmimg_jax.eval.report import default_split, real_images
  if not FLAGS.inception_weights:
    raise app.UsageError("--write_stats needs --inception_weights.")
  # Before every image's features.
  path = _writable_file("--write_stats", FLAGS.write_stats, "the statistics' .npz file",
                        "overwrite_stats")
  data = _data_config()  # config.json only: a bad --workdir fails before the weights load
  inception = InceptionFeatures(_path_flag("inception_weights"))  # a bad one fails before the data
  split = FLAGS.stats_split or default_split(load_source(data).all_splits)
  source = load_source(data, split)
  n = min(FLAGS.num_samples, len(source))
  if n < 2:  # before the images: fid.statistics' error names no flag
    raise ValueError(f"--write_stats: {data.name}/{split} has {n} record(s); statistics need 2 "
                     "or more images: pass the --stats_split of a larger split, or add images.")
  mu, sigma = fid.statistics(inception(real_images([source[i] for i in range(n)],
                                                    data.image_size)))
  # Not over one written meanwhile; a failed write keeps them in a spare file, named in the error.
  npz = fid.statistics_npz(mu, sigma, num_images=n, dataset=dataset_id(data), split=split,
                           image_size=int(data.image_size))
  output_files.write_results(path, npz, f"--write_stats {str(path)!r}", FLAGS.overwrite_stats,
                             "while the statistics were computed", "stats_*.npz", "the statistics")
  print(f"Wrote Inception statistics of {n} {data.name}/{split} images "
        f"({data.image_size}px, resized to 299) to {path}.")


def _path_flag(name: str) -> str | None:
  """--`name`'s file with ~ expanded, as every path flag (no shell expands it after '=')."""
  value = FLAGS[name].value
  return value and str(output_files.flag_path(value, f"--{name}"))


def _check_flags() -> None:
  """An app.UsageError for a blank path flag or a combination of flags that does not apply."""
  # A blank one would read as not given: an FID against the real images instead of --ref_stats,
  # or none at all; a run's evaluation instead of --write_stats; the run's data_dir for
  # --data_dir; the default split for --stats_split.
  named = {"ref_stats": ("FILE", "the file"), "inception_weights": ("FILE", "the file"),
           "write_stats": ("FILE", "the file"), "data_dir": ("DIR", "the TFDS data directory"),
           "stats_split": ("SPLIT", "the split")}
  if blank := next((f for f in named if FLAGS[f].present and not FLAGS[f].value.strip()), None):
    var, what = named[blank]
    raise app.UsageError(cli.blank_flag(f"--{blank}", var, f"name {what}, or drop the flag"))
  if not FLAGS.write_stats and not FLAGS.workdir:
    raise app.UsageError("--workdir is required: the train.py run to evaluate (or --write_stats "
                         "FILE, with --workdir or --config, for a real split's statistics).")
  if not FLAGS.write_stats and (given := [f for f in ("config", "stats_split")
                                          if FLAGS[f].present]):
    raise app.UsageError(f"{cli.only_apply([f'--{f}' for f in given])} with --write_stats; the "
                         "evaluation reads the run's config from its checkpoint.")
  if FLAGS.write_stats and (given := [f"--{f}" for f in _EVALUATION_ONLY if FLAGS[f].present]):
    raise app.UsageError(f"{cli.only_apply(given)} to the evaluation of a run, not to "
                         "--write_stats (statistics of real images; --stats_split names their "
                         f"split); drop {cli.them(given)}.")
  if FLAGS.write_stats and FLAGS.workdir and FLAGS["config"].present:  # one would be ignored
    raise app.UsageError("--write_stats reads the data of --workdir (a run's) or of --config, "
                         "not both: drop one.")
  if not FLAGS.write_stats and FLAGS["overwrite_stats"].present:
    raise app.UsageError("--overwrite_stats only applies with --write_stats (it lets that "
                         "replace an existing statistics file); drop it, or pass --write_stats.")
  if not FLAGS.out and FLAGS["overwrite_out"].present:
    raise app.UsageError("--overwrite_out only applies with --out (it lets that replace an "
                         "existing results file; the default file is replaced by the same "
                         "evaluation's results); drop it, or pass --out.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:  # absl leaves them: `--overwrite_out false` set it and left "false"
    raise app.UsageError(f"Unexpected argument(s) {argv[1:]}: evaluate.py takes flags only. Give "
                         "a value as --name=value, and a boolean flag as --name or --noname "
                         "(--nooverwrite_out, or --overwrite_out=false), not '--name false'.")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)  # TFDS's and Orbax's INFO; ours stay
  cli.quiet_orbax()
  _check_flags()
  import jax
  platforms.start_backends("evaluate.py", 1)
  from llmimg_jax.eval.report import evaluate_run, format_table, to_json
  from llmimg_jax.sample.restore import CheckpointError
  try:
    if FLAGS.write_stats:
      return _write_stats()
    # Checked before the evaluation (hours at 30k samples), not after.
    if FLAGS.out:
      out = _writable_file("--out", FLAGS.out, "the results' .json file", "overwrite_out")
    else:
      out_dir = _check_writable("--workdir", output_files.flag_path(FLAGS.workdir, "--workdir"),
                                "--out")
      out = None
    results = evaluate_run(FLAGS.workdir, splits=FLAGS.split, num_samples=FLAGS.num_samples,
                           step=FLAGS.step, seed=FLAGS.seed, batch_size=FLAGS.batch_size,
                           data_dir=FLAGS.data_dir,
                           inception_weights=_path_flag("inception_weights"),
                           ref_stats=_path_flag("ref_stats"))
    # Another split, seed or number of images scored (capped by a split's size) gets another file.
    counts = [str(row["num_images"]) for row in results["splits"].values()]
    n = counts[0] if len(set(counts)) == 1 else "+".join(counts)
    name = f"eval_{results['step']}_{'+'.join(results['splits'])}_n{n}_seed{FLAGS.seed}.json"
    if out is None:  # the same evaluation's file (its results again) is replaced
      out = _default_out(out_dir / name, results)
      named, replace = f"the results file {out}", True
    else:  # not one written meanwhile (another evaluation's)
      named, replace = f"--out {str(out)!r}", FLAGS.overwrite_out
    # A failed write keeps the results in a spare file, named in the error.
    output_files.write_results(out, to_json(results), named, replace, "during the evaluation",
                               "eval_*.json")
    print(format_table(results))  # after: a stdout that fails does not lose them
  # A bad split, run, weights or stats file; a .pth of weights without torch (ImportError).
  except (CheckpointError, ValueError, OSError, ImportError) as e:
    logging.debug("evaluate.py failed", exc_info=True)
    message = str(e)
    if FLAGS.data_dir:  # the data config's checks name its key: here the flag set it
      from llmimg_jax.data.pipeline import keys_as_flags  # pylint: disable=g-import-not-at-top
      message = keys_as_flags(message, ("data_dir",))
    cli.fail("evaluate.py", message, 1)
  except (MemoryError, jax.errors.JaxRuntimeError) as e:  # e.g. --batch_size 100000
    sizes = "--num_samples" if FLAGS.write_stats else "--batch_size or --num_samples"
    if not (message := cli.out_of_memory(e, sizes)):
      raise
    logging.debug("evaluate.py failed", exc_info=True)
    cli.fail("evaluate.py", message, 1)
  print(f"Wrote {out}")


def _default_out(path, results: dict):
  """`path` (the default results file), unless it holds an Inception FID that `results` lack or
  took against other weights or reference statistics: hours of work that an evaluation without
  --inception_weights, or with another --ref_stats, would replace. It is then kept, and `results`
  go beside it, to <name>_no_inception.json or <name>_ref-<theirs>.json (the first 8 hex digits
  of their --ref_stats' sha256, or 'real' for none; _weights-<sha256 8> for other weights)."""
  if not path.is_file():  # none, or (not read: a pipe waits) one that write_results refuses
    return path
  try:
    old = json.loads(path.read_text())
    held = [s for s, row in old["splits"].items() if "fid_inception" in row]
    lost = [s for s in held if "fid_inception" not in results["splits"].get(s, {})]
    # Results written before the weights were recorded (no such key) are not told apart by them.
    other = [k for k in ("ref_stats", "inception_weights") if held and not lost
             and (k in old or k == "ref_stats") and _sha256(old, k) != _sha256(results, k)]
  except (OSError, ValueError, KeyError, TypeError, AttributeError):  # none, or not results
    return path
  if lost:
    print(f"Kept {path}: it holds the Inception FID ({', '.join(lost)}), which these results "
          f"(without --inception_weights) lack; pass --out {path} --overwrite_out to replace it.")
    return path.with_name(f"{path.stem}_no_inception{path.suffix}")
  if not other:
    return path
  names = {"ref_stats": "reference statistics", "inception_weights": "Inception weights"}
  print(f"Kept {path}: its Inception FID ({', '.join(held)}) is against other "
        f"{' and '.join(names[k] for k in other)} than these results' (--ref_stats, "
        f"--inception_weights); pass --out {path} --overwrite_out to replace it.")
  tag = "_".join(f"{'ref' if k == 'ref_stats' else 'weights'}-"
                 f"{(_sha256(results, k) or 'real')[:8]}" for k in other)
  return path.with_name(f"{path.stem}_{tag}{path.suffix}")


def _sha256(results: dict, key: str) -> str | None:
  """The sha256 that `results` record for their --ref_stats or --inception_weights (None: none
  given, the Inception FID then being against the real reference images)."""
  return (results.get(key) or {}).get("sha256")


def _writable_file(flag: str, value: str, what: str, overwrite: str) -> Path:
  """The file `flag` names, `~` expanded and checked before hours of work by
  output_files.check_output_file (its folder made; not existing unless --`overwrite`); a link is
  kept as named: it is written through, as the shell's `>` does, and named with its target."""
  if not value.strip():
    raise OSError(f"{flag} is blank; name {what}.")
  out = output_files.expand_output(value, flag)
  output_files.check_output_file(out, flag, FLAGS[overwrite].value, what, overwrite)
  return Path(out)


def _check_writable(flag: str, folder: Path, fix_flag: str) -> Path:
  """`folder`; OSError naming `flag` and `fix_flag` if it is one no file can be created in."""
  if folder.is_dir() and (problem := output_files.cannot_write(folder)):
    raise OSError(f"{flag}: cannot write into {folder} ({problem}); pass a writable {fix_flag}.")
  return folder


def _run(argv) -> None:
  """main, a usage error in one line and status 2, as a flag's (absl printed the whole help, the
  error last, with status 1)."""
  try:
    main(argv)
  except app.UsageError as e:
    cli.fail("evaluate.py", str(e), 2)


if __name__ == "__main__":
  console.guard_stdout("evaluate.py")
  with cli.ends_on_signal("evaluate.py", "no results were written: rerun the command."):
    app.run(_run, flags_parser=cli.flags_parser("evaluate.py"))
