"""evaluate.py's work: sample a run's EMA generator on a split's captions and measure it."""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from llmimg_jax.data.images import center_crop_resize
from llmimg_jax.data.pipeline import dataset_id, load_source
from llmimg_jax.eval import fid
from llmimg_jax.eval.generate import generate_for_captions
from llmimg_jax.eval.scoring import METRICS as ATTRIBUTE_COLUMNS  # one column per attribute
from llmimg_jax.eval.shapes_eval import ShapesEvaluator, SplitData, load_split, shapes_builder
from llmimg_jax.text.generator import check_seed

if TYPE_CHECKING:
  from llmimg_jax.sample import Sampler

log = logging.getLogger(__name__)


def _reference(data_cfg, split: str, n: int, size: int) -> tuple[SplitData, SplitData]:
  """Real images [0, n) of `split` and a disjoint real set of the same distribution and size:
  train records for `test` (train and test draw from the same (shape, colour) pairs), holdout
  records [n, 2n) for `holdout` (n at most half the split, so that both fit). Both at
  data.image_size, the resolution the run trained and generates at."""
  n = _num_images(split, n, size)
  if split == "holdout":
    pair = load_split(data_cfg, split, n), load_split(data_cfg, split, n, start=n)
  else:
    pair = load_split(data_cfg, split, n), load_split(data_cfg, "train", n)
  return tuple(d.at_size(data_cfg.image_size) for d in pair)


def _num_images(split: str, n: int, size: int) -> int:
  """The images _reference scores of a split of `size` records: n, capped by the split (holdout:
  by half of it, the other half being the reference)."""
  return min(n, size // 2 if split == "holdout" else size)


def _refuse_few(counts: dict[str, int], dataset: str) -> None:
  """ValueError, before any sampling, for a split that would score fewer than the 2 images a
  covariance (the FID's) needs."""
  if few := {s: n for s, n in counts.items() if n < 2}:
    raise ValueError(
        f"{dataset}: {', '.join(f'{s} would score {n} image(s)' for s, n in few.items())}; the "
        "FID needs 2 or more per split: pass --num_samples 2 or more, and evaluate a split with "
        "2 or more records (holdout: 4, half of it being the reference).")


def evaluate_run(workdir: str, splits: Sequence[str] | None = None, num_samples: int = 1000,
                 step: int | None = None, seed: int = 0, batch_size: int = 64,
                 data_dir: str | None = None, inception_weights: str | None = None,
                 ref_stats: str | None = None) -> dict:
  """captioned_shapes runs: shapes metrics (+ the standard FID with `inception_weights`) on
  `splits` (default: test and, where the build has it, holdout). Other data: the standard FID
  only (`inception_weights` required) on `splits` (default: test, else train)."""
  from llmimg_jax.sample import Sampler  # pylint: disable=g-import-not-at-top
  check_seed(seed)  # before the run loads (evaluate_shapes and evaluate_inception check it again)
  if ref_stats and not inception_weights:
    raise ValueError("--ref_stats holds statistics of Inception features: pass "
                     "--inception_weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth) "
                     "with it.")
  sampler = Sampler.from_workdir(workdir, step)
  data_cfg = ml_collections.ConfigDict(sampler.config.data.to_dict())
  if data_dir:
    data_cfg.data_dir = data_dir
  _warn_relative_paths(data_cfg, given_data_dir=bool(data_dir))
  if ref_stats:  # before any sampling
    check_ref_size(ref_stats, int(data_cfg.image_size), dataset_id(data_cfg))
  inception = None
  if inception_weights:
    from llmimg_jax.eval.inception import InceptionFeatures  # pylint: disable=g-import-not-at-top
    inception = InceptionFeatures(inception_weights)
  if data_cfg.name != "captioned_shapes":
    if inception is None:
      raise ValueError(f"The run trained on {data_cfg.name}: only the standard FID applies. Pass "
                       "--inception_weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth) "
                       "and, for DF-GAN's protocol, --ref_stats.")
    return evaluate_inception(sampler, data_cfg, inception, splits, num_samples, seed,
                              batch_size, ref_stats) | {"workdir": str(workdir)}
  return {"workdir": str(workdir)} | evaluate_shapes(sampler, data_cfg, inception, splits,
                                                     num_samples, seed, batch_size, ref_stats)


def _warn_relative_paths(data_cfg: ml_collections.ConfigDict, given_data_dir: bool) -> None:
  """A run trained before train.py saved its data paths in full names them relative to the
  directory it ran in, which evaluate.py cannot know: the same path here may be other data."""
  paths = {"data.folder": data_cfg.folder if data_cfg.name == "captioned_folder" else None,
           "data.data_dir": None if given_data_dir else data_cfg.get("data_dir")}
  for key, path in paths.items():
    if path and "://" not in path and not os.path.isabs(os.path.expanduser(path)):
      fix = ("run evaluate.py in the directory train.py ran in" if key == "data.folder" else
             "run evaluate.py in the directory train.py ran in, or pass --data_dir")
      log.warning("The run's config names %s=%r, relative to the directory train.py ran in: it "
                  "is read as %s. If the run trained elsewhere, %s.", key, path,
                  os.path.abspath(os.path.expanduser(path)), fix)


def evaluate_shapes(sampler: Sampler, data_cfg: ml_collections.ConfigDict,
                    inception: Callable[[np.ndarray], np.ndarray] | None,
                    splits: Sequence[str] | None = None, num_samples: int = 1000, seed: int = 0,
                    batch_size: int = 64, ref_stats: str | None = None) -> dict:
  """The shapes metrics of a captioned_shapes run on `splits` (default: test and, where the build
  has it, holdout): images generated from the first caption of records [0, N) of each split,
  scored by the shapes evaluator, with their in-domain FID against a disjoint real set
  (_reference); and their standard FID where `inception` is given."""
  seed = check_seed(seed)  # before the evaluator; an int in the results (to_json writes it)
  builder = shapes_builder(data_cfg)
  # test and holdout only: _reference draws the comparison set of `test` from train.
  held_out = [s for s in ("test", "holdout") if s in builder.info.splits]
  name = f"captioned_shapes/{data_cfg.config}"
  if splits and "train" in splits and "train" in builder.info.splits:
    raise ValueError(f"{name}: the train split is not scored (it is the reference set of test's "
                     f"in-domain FID); evaluate one of {held_out}.")
  splits = _check_splits(splits, held_out, held_out, name)
  _refuse_few({s: _num_images(s, num_samples, builder.info.splits[s].num_examples)
               for s in splits}, name)
  given_ref = (fid.load_statistics(ref_stats, getattr(inception, "dim", None)) if ref_stats
               else None)  # read once, for every split; its size checked before sampling
  evaluator = ShapesEvaluator.load_or_train(data_cfg)
  results = {"step": sampler.step, "seed": seed, "dataset": name, "evaluator": evaluator.meta,
             **_inception_sources(inception, ref_stats), "splits": {}}
  ref_info = results.get("ref_stats", {})  # what --write_stats recorded in it, read above
  for split in splits:
    t0 = time.perf_counter()
    size = builder.info.splits[split].num_examples
    real, other = _reference(data_cfg, split, num_samples, size)
    captions = [c[0] for c in real.captions]
    images = generate_for_captions(sampler.models, sampler.ema_params, sampler.text_params,
                                   sampler.tokenizer, captions, seed, batch_size,
                                   check_finite=True, mesh=sampler.mesh)
    other_stats = fid.statistics(evaluator.features(other.images))
    row = {"num_images": len(images),
           "generated": evaluator.score(images, captions),
           "real": evaluator.score(real.images, captions),
           "fid_indomain": fid.frechet_distance(
               *fid.statistics(evaluator.features(images)), *other_stats),
           "fid_indomain_floor": fid.frechet_distance(
               *fid.statistics(evaluator.features(real.images)), *other_stats)}
    if inception is not None:
      ref = given_ref if given_ref is not None else fid.statistics(inception(other.images))
      row["fid_inception"] = fid.frechet_distance(*fid.statistics(inception(images)), *ref)
      _warn_if_few(split, len(images))
      # Real images [0, n) of a split against statistics of that split's first records (the
      # documented `--write_stats --stats_split test`): the same records or a superset, ~0 or
      # biased low, not a floor: omitted.
      same = (ref_info.get("dataset"), ref_info.get("split")) == (dataset_id(data_cfg), split)
      row["fid_inception_floor"] = None if same else fid.frechet_distance(
          *fid.statistics(inception(real.images)), *ref)
    row["seconds"] = time.perf_counter() - t0
    results["splits"][split] = row
  return results


def check_ref_size(ref_stats: str, image_size: int, dataset: str | None = None) -> None:
  """ValueError if `ref_stats` (written by evaluate.py --write_stats, which records the size and
  dataset) are of real images of another size than the run generates: that FID would measure the
  gap in resolution. Another dataset than the run's (`dataset_id`) is allowed, with a warning.
  Statistics from elsewhere (DF-GAN's) do not say, and pass."""
  if not os.path.isfile(ref_stats):
    return  # fid.load_statistics names the missing file
  info = fid.statistics_info(ref_stats)
  if dataset and info.get("dataset") not in (None, dataset):
    log.warning("--ref_stats %s holds statistics of %s, not of the run's %s: its FID measures the "
                "distance to that data.", ref_stats, info["dataset"], dataset)
  if (size := info.get("image_size")) is None:
    return
  try:  # int() names no file ("invalid literal"), and makes 64.9 a 64
    whole = float(size).is_integer()
  except (ValueError, OverflowError):
    whole = False
  if not whole:
    raise ValueError(f"--ref_stats {ref_stats} records image_size {size!r}, which is no size in "
                     f"pixels; {fid.STATS_FIX}")
  if (size := int(float(size))) != image_size:
    raise ValueError(f"--ref_stats {ref_stats} holds statistics of {size}px real images, but "
                     f"the run generates {image_size}px ones; write them at its size with "
                     "`python evaluate.py --write_stats PATH --workdir WORKDIR "
                     "--inception_weights ...` (the run's own data config).")


def default_split(all_splits: Sequence[str]) -> str:
  """The split the standard FID scores by default: test, or train where there is none."""
  return "test" if "test" in all_splits else "train"


def real_images(records: Sequence[dict], size: int) -> np.ndarray:
  """The FID reference: records' images, centre crop resized to the run's size [n, R, R, 3]."""
  return np.stack([center_crop_resize(r["image"], size) for r in records])


def evaluate_inception(sampler: Sampler, data_cfg: ml_collections.ConfigDict,
                       features: Callable[[np.ndarray], np.ndarray],
                       splits: Sequence[str] | None = None, num_samples: int = 1000,
                       seed: int = 0, batch_size: int = 64, ref_stats: str | None = None) -> dict:
  """The standard FID of any run: images generated from the first caption of records [0, N) of
  each split against `ref_stats`, or else against those N real images (centre crop, resized)."""
  seed = check_seed(seed)  # an int in the results (to_json writes it)
  all_splits = load_source(data_cfg).all_splits
  splits = _check_splits(splits, [default_split(all_splits)], all_splits, data_cfg.name)
  given_ref = (fid.load_statistics(ref_stats, getattr(features, "dim", None)) if ref_stats
               else None)  # read once, for every split; its size checked before sampling
  sources = {split: load_source(data_cfg, split) for split in splits}
  _refuse_few({s: min(num_samples, len(source)) for s, source in sources.items()}, data_cfg.name)
  results = {"step": sampler.step, "seed": seed, "dataset": dataset_id(data_cfg),
             **_inception_sources(features, ref_stats), "splits": {}}
  for split, source in sources.items():
    t0 = time.perf_counter()
    if num_samples > len(source):
      log.warning("%s has %d records: scoring %d images, not --num_samples %d.", split,
                  len(source), len(source), num_samples)
    records = [source[i] for i in range(min(num_samples, len(source)))]
    captions = [r["captions"][0] for r in records]
    images = generate_for_captions(sampler.models, sampler.ema_params, sampler.text_params,
                                   sampler.tokenizer, captions, seed, batch_size,
                                   check_finite=True, mesh=sampler.mesh)
    ref = given_ref
    if ref is None:
      ref = fid.statistics(features(real_images(records, data_cfg.image_size)))
    _warn_if_few(split, len(images))
    results["splits"][split] = {
        "num_images": len(images),
        "fid_inception": fid.frechet_distance(*fid.statistics(features(images)), *ref),
        "reference": ref_stats or f"{len(records)} real {split} images",
        "seconds": time.perf_counter() - t0}
  return results


def _inception_sources(features, ref_stats: str | None) -> dict:
  """What the Inception FIDs are of: the weights and the reference statistics file (path, sha256
  and what --write_stats recorded in it)."""
  sources = {} if features is None else {"inception_weights": getattr(features, "source", None)}
  if ref_stats:
    sources["ref_stats"] = {"path": str(ref_stats), "sha256": fid.file_sha256(ref_stats),
                            **fid.statistics_info(ref_stats)}
  return sources


PUBLISHED_FID_IMAGES = 30_000  # COCO val captions, as DF-GAN and most text-to-image papers


def _warn_if_few(split: str, n: int) -> None:
  if n < PUBLISHED_FID_IMAGES:
    log.warning("%s: the Inception FID over %d images is biased upward (the bias grows like 1/n): "
                "compare it with published numbers only at their image count (%d for COCO).",
                split, n, PUBLISHED_FID_IMAGES)


def _check_splits(splits: Sequence[str] | None, default: list[str], available: Sequence[str],
                  dataset: str) -> list[str]:
  if splits is None:
    return default
  if isinstance(splits, str):  # evaluate_run(splits="test"): one split, not its letters
    splits = [splits]
  if missing := [s for s in splits if available and s not in available]:
    raise ValueError(f"{dataset} has no split {', '.join(map(repr, missing))}; available: "
                     f"{list(available)}.")
  # Each once (`--split test --split test` scored it twice), in the dataset's order: the results
  # file is named by them, and `--split holdout --split test` wrote a second file beside the
  # default order's instead of replacing it.
  return [s for s in available if s in splits] if available else list(dict.fromkeys(splits))


def to_json(results: dict) -> str:
  """Strict JSON: NaN (a metric without statements, e.g. size on a colours-only build) and inf ->
  null; numpy scalars as Python numbers."""
  def clean(x):
    if isinstance(x, dict):
      return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return [clean(v) for v in x]
    if isinstance(x, np.generic):  # e.g. evaluate_run(seed=np.int64(3)): json cannot write it
      x = x.item()
    return None if isinstance(x, float) and not math.isfinite(x) else x
  return json.dumps(clean(results), indent=2, allow_nan=False)


def format_table(results: dict) -> str:
  if "evaluator" not in results:  # a run on other data: the standard FID only
    return "\n".join([f"step {results['step']} of {results['workdir']} ({results['dataset']})",
                      *(f"{split}: Inception FID {r['fid_inception']:.2f} over {r['num_images']} "
                        f"images, against {r['reference']}"
                        for split, r in results["splits"].items())])
  head = ["split", "images", "caption_acc", *ATTRIBUTE_COLUMNS, "FID(in-domain)", "floor"]
  rows = []
  for split, r in results["splits"].items():
    for kind in ("generated", "real"):
      s = r[kind]
      fid_cols = ([f"{r['fid_indomain']:.3f}", f"{r['fid_indomain_floor']:.3f}"]
                  if kind == "generated" else ["", ""])
      rows.append([f"{split} ({kind})", str(r["num_images"]), f"{s['caption_accuracy']:.3f}",
                   *(f"{s[m]:.3f}" for m in ATTRIBUTE_COLUMNS), *fid_cols])
    if "fid_inception" in r:  # in the FID columns: the generated images', the real ones'
      rows.append([f"{split} (Inception FID)", str(r["num_images"]), "",
                   *("" for _ in ATTRIBUTE_COLUMNS), f"{r['fid_inception']:.2f}",
                   "n/a" if r["fid_inception_floor"] is None else
                   f"{r['fid_inception_floor']:.2f}"])
  widths = [max(len(x) for x in col) for col in zip(head, *rows)]
  line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
  return "\n".join([f"step {results['step']} of {results['workdir']}", line(head),
                    *(line(r) for r in rows)])
