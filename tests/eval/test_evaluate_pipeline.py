"""evaluate.py's pipeline and the in-training evaluator, end to end on a tiny run: the cached
shapes evaluator, report.evaluate_run and evaluate_inception (also of a run on a captioned_folder,
which only the standard FID scores), TrainingEvaluator and the results table.

The run is tests/conftest.py's (host-drawn params in train.py's workdir layout, no training), the
data captioned_shapes/tiny_32 and the evaluator a deliberately short training of it (cached in a
temp LLMIMG_CACHE_DIR, tests/eval/conftest.py): this checks the mechanics (files, keys, table,
best.json, TensorBoard), not the evaluator's accuracy (tests/eval/test_shapes_eval.py does that).
evaluate.py's command line: tests/eval/test_evaluate_cli.py; its results file:
test_evaluate_results_file.py.
"""
import json
import logging
import shutil

import numpy as np
import pytest

from llmimg_jax.eval import evaluator as ev
from llmimg_jax.eval import shapes_eval
from llmimg_jax.eval.shapes_eval import ShapesEvaluator
from tests.eval.utils import _MeanStdFeatures, _stand_in_inception, _to_evaluate
from tests.train.utils import tiny_config


def test_cached_evaluator_loads_identically(tiny_eval):
  data, _ = tiny_eval
  a = ShapesEvaluator.load_or_train(data, ev.TrainSettings(steps=1))  # from the cache: no training
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
  b = ShapesEvaluator.load_or_train(data)
  np.testing.assert_array_equal(a.features(images), b.features(images))
  assert a.meta == b.meta and a.meta["settings"]["steps"] == 30


def test_a_cached_evaluator_written_before_the_sha256_loads(tiny_eval, tmp_path):
  """Its file: the weights alone."""
  import flax.serialization
  data, cache = tiny_eval
  shutil.copytree(cache / "evaluator", tmp_path, dirs_exist_ok=True)
  cached = ShapesEvaluator.load_or_train(data, directory=tmp_path)
  next(tmp_path.glob("*.msgpack")).write_bytes(flax.serialization.to_bytes(cached.params))
  old = ShapesEvaluator.load_or_train(data, ev.TrainSettings(steps=1), directory=tmp_path)
  assert old.meta == cached.meta and old.fingerprint == cached.fingerprint  # not trained again


@pytest.mark.parametrize("damaged", ["msgpack", "json", "shapes", "not_a_dict", "int", "flat",
                                     "flipped"])
def test_a_damaged_cached_evaluator_is_trained_again(tiny_eval, tmp_path, caplog, damaged):
  """Cut short as by a crash mid-write, weights of another version's network (a kernel of other
  shape: a flax ScopeParamShapeError at the first use), JSON meta that is no object, or msgpack
  weights that are no dict of dicts (each an AttributeError traceback), a byte flipped in a weight
  (it loaded, and scored otherwise, without a word)."""
  import flax.serialization
  data, cache = tiny_eval
  shutil.copytree(cache / "evaluator", tmp_path, dirs_exist_ok=True)
  path = next(tmp_path.glob("*.json" if damaged in ("json", "not_a_dict") else "*.msgpack"))
  if damaged == "shapes":
    params = flax.serialization.msgpack_restore(
        flax.serialization.msgpack_restore(path.read_bytes())["weights"])
    params["cell"]["present_head"]["kernel"] = params["cell"]["present_head"]["kernel"][:-1]
    path.write_bytes(shapes_eval._pack(flax.serialization.msgpack_serialize(params)))
  elif damaged == "flipped":
    weights = bytearray(path.read_bytes())
    weights[len(weights) // 2] ^= 1  # in a weight
    path.write_bytes(bytes(weights))
  elif damaged in ("int", "flat"):
    path.write_bytes(flax.serialization.msgpack_serialize(5 if damaged == "int" else {"cell": 5}))
  else:
    path.write_bytes(b"null" if damaged == "not_a_dict" else path.read_bytes()[:10])
  settings = ev.TrainSettings(steps=1, batch_size=16)
  with caplog.at_level(logging.WARNING):
    retrained = ShapesEvaluator.load_or_train(data, settings, directory=tmp_path)
  assert path.name in caplog.text and "cannot be read" in caplog.text
  assert "training it again" in caplog.text
  assert ("sha256 is not the one it records" in caplog.text) == (damaged == "flipped")
  assert retrained.meta["settings"]["steps"] == 1
  again = ShapesEvaluator.load_or_train(data, directory=tmp_path)  # the new cache reads back
  assert again.meta == retrained.meta
  assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".msgpack"]  # no temp files


def test_an_evaluator_that_cannot_be_cached_is_used_all_the_same(tiny_eval, tmp_path, caplog):
  """The cache written after the training: a folder that cannot be made (a file in the way, no
  write permission) failed the run there (train.py: a traceback), the trained evaluator lost."""
  data, _ = tiny_eval
  (tmp_path / "file").write_text("in the way")
  with caplog.at_level(logging.WARNING):
    evaluator = ShapesEvaluator.load_or_train(data, ev.TrainSettings(steps=1, batch_size=16),
                                              directory=tmp_path / "file" / "evaluator")
  assert evaluator.meta["settings"]["steps"] == 1
  assert f"Could not cache the shapes evaluator in {tmp_path / 'file' / 'evaluator'}" in caplog.text
  assert "LLMIMG_CACHE_DIR" in caplog.text


def test_evaluate_run_scores_both_splits(run, sampler, tiny_eval):
  from llmimg_jax.eval import fid
  from llmimg_jax.eval.generate import generate_for_captions
  from llmimg_jax.eval.report import evaluate_run, format_table
  from llmimg_jax.eval.shapes_eval import load_split
  data, _ = tiny_eval
  results = evaluate_run(str(run.workdir), num_samples=16, data_dir=data.data_dir, batch_size=8,
                         seed=3)  # not the default: the images must be of this seed's noise
  assert results["step"] == 2 and set(results["splits"]) == {"test", "holdout"}
  # Each row recomputed: 16 real records of the split; the in-domain FID's reference set is 16
  # other real images of the same distribution (test: train records, holdout: its next 16).
  evaluator = ShapesEvaluator.load_or_train(data)  # the cached one
  stats = lambda images: fid.statistics(evaluator.features(images))
  for split, (other_split, start) in {"test": ("train", 0), "holdout": ("holdout", 16)}.items():
    r = results["splits"][split]
    real, other = load_split(data, split, 16), load_split(data, other_split, 16, start=start)
    assert len(real.images) == len(other.images) == r["num_images"] == 16
    captions = [c[0] for c in real.captions]
    generated = generate_for_captions(sampler.models, sampler.ema_params, sampler.text_params,
                                      sampler.tokenizer, captions, 3, 8)
    assert r["generated"] == pytest.approx(evaluator.score(generated, captions))
    assert r["real"] == pytest.approx(evaluator.score(real.images, captions))
    assert r["real"] != pytest.approx(r["generated"])  # the rows tell the two apart
    assert r["fid_indomain"] == pytest.approx(
        fid.frechet_distance(*stats(generated), *stats(other.images)), rel=1e-6)
    floor = fid.frechet_distance(*stats(real.images), *stats(other.images))
    assert r["fid_indomain_floor"] == pytest.approx(floor, rel=1e-6) and floor > 1e-3
  table = format_table(results)
  assert "holdout (generated)" in table and "FID(in-domain)" in table
  json.dumps(results)  # serialisable


def test_run_on_other_data_gets_the_standard_fid(folder_run, tmp_path, monkeypatch):
  from llmimg_jax.data.pipeline import load_source
  from llmimg_jax.eval import fid, report
  from llmimg_jax.eval.generate import generate_for_captions
  from llmimg_jax.eval.report import evaluate_run, format_table
  from llmimg_jax.sample import Sampler
  with pytest.raises(ValueError, match="captioned_folder: only the standard FID applies"):
    evaluate_run(str(folder_run.workdir))
  _stand_in_inception(monkeypatch)
  mu, sigma = np.arange(6.0) * 10, np.eye(6) * 100
  fid.save_statistics(tmp_path / "ref.npz", mu, sigma, num_images=10)
  fid.save_statistics(tmp_path / "ref5.npz", mu[:5], sigma[:5, :5], num_images=10)
  monkeypatch.setattr(report, "generate_for_captions", None)  # refused before generating
  with pytest.raises(ValueError, match=r"ref5.npz holds mu \(5,\) and sigma \(5, 5\); FID "
                                       r"statistics of 6-d features need mu \(6,\)"):
    evaluate_run(str(folder_run.workdir), num_samples=8, inception_weights="inception.pth",
                 ref_stats=str(tmp_path / "ref5.npz"))
  monkeypatch.undo()
  _stand_in_inception(monkeypatch)
  results = evaluate_run(str(folder_run.workdir), num_samples=8, batch_size=8,
                         inception_weights="inception.pth", ref_stats=str(tmp_path / "ref.npz"))
  assert list(results["splits"]) == ["train"]
  r = results["splits"]["train"]
  assert r["num_images"] == 8 and r["reference"] == str(tmp_path / "ref.npz")
  assert results["inception_weights"] == _MeanStdFeatures.source
  assert results["ref_stats"]["path"] == str(tmp_path / "ref.npz")
  assert results["ref_stats"]["num_images"] == 10 and len(results["ref_stats"]["sha256"]) == 64
  sampler = Sampler.from_workdir(str(folder_run.workdir))
  source = load_source(sampler.config.data)
  assert results["dataset"] == f"captioned_folder:{sampler.config.data.folder}"  # the one scored
  generated = generate_for_captions(
      sampler.models, sampler.ema_params, sampler.text_params, sampler.tokenizer,
      [source[i]["captions"][0] for i in range(8)], 0, 8)
  expected = fid.frechet_distance(*fid.statistics(_MeanStdFeatures("inception.pth")(generated)),
                                  mu, sigma)
  np.testing.assert_allclose(r["fid_inception"], expected, rtol=1e-6)
  with pytest.raises(ValueError, match="captioned_folder has no split 'test'; available: "
                                       r"\['train'\]"):
    evaluate_run(str(folder_run.workdir), splits=["test"], inception_weights="inception.pth")
  assert "train: Inception FID" in format_table(results)


def test_non_finite_generated_images_are_refused(folder_run, monkeypatch):
  """A checkpoint whose generator gives NaN was scored as flat-colour images without a word."""
  import jax
  from llmimg_jax.eval.report import evaluate_run
  from llmimg_jax.sample import Sampler
  from_workdir = Sampler.from_workdir.__func__

  def nan_sampler(cls, *args, **kwargs):
    sampler = from_workdir(cls, *args, **kwargs)
    sampler.ema_params = jax.tree_util.tree_map(lambda x: x * np.nan, sampler.ema_params)
    return sampler
  monkeypatch.setattr(Sampler, "from_workdir", classmethod(nan_sampler))
  _stand_in_inception(monkeypatch)
  with pytest.raises(ValueError, match="8 of 8 generated images are not finite"):
    evaluate_run(str(folder_run.workdir), num_samples=8, batch_size=8,
                 inception_weights="inception.pth")


def test_a_split_of_one_image_is_refused_before_sampling(run, tmp_path,
                                                         monkeypatch):
  """One image has no covariance: "Features must be [n >= 2, d]" came after all the sampling."""
  from PIL import Image
  from llmimg_jax.eval import report
  from llmimg_jax.eval.shapes_eval import ShapesEvaluator
  from tests.sample.utils import save_run
  folder = tmp_path / "one_image"
  folder.mkdir()
  Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(folder / "0.png")
  (folder / "captions.jsonl").write_text(json.dumps({"file": "0.png", "caption": "black"}) + "\n")
  config = tiny_config(tmp_path / "tfds")
  config.data.name, config.data.folder = "captioned_folder", str(folder)
  one = save_run(tmp_path / "run", config)
  _stand_in_inception(monkeypatch)
  monkeypatch.setattr(report, "generate_for_captions", None)  # refused before generating
  monkeypatch.setattr(ShapesEvaluator, "load_or_train", None)  # and before the evaluator
  with pytest.raises(ValueError, match=r"captioned_folder: train would score 1 image\(s\); the "
                                       r"FID needs 2 or more per split: pass --num_samples"):
    report.evaluate_run(str(one.workdir), inception_weights="inception.pth")
  with pytest.raises(ValueError, match=r"tiny_32: test would score 1 image\(s\), holdout would "
                                       r"score 1 image\(s\); the FID needs 2"):
    report.evaluate_run(str(run.workdir), num_samples=1)


def test_a_jax_int_seed_is_recorded_as_an_int(sampler, tiny_eval):
  """seed=jnp.int32(3), a seed as TextGenerator.generate and the Sampler take it, stayed a JAX
  array in the results, which json cannot write (after all the evaluation)."""
  import jax.numpy as jnp
  from llmimg_jax.eval.report import evaluate_inception, to_json
  data, _ = tiny_eval
  results = evaluate_inception(sampler, data, _MeanStdFeatures("inception.pth"), num_samples=2,
                               batch_size=8, seed=jnp.int32(3))
  assert type(results["seed"]) is int and json.loads(to_json(results))["seed"] == 3


def test_standard_fid_of_any_run(run, sampler, tiny_eval, caplog):
  """The Inception-only path (runs on COCO or a folder), with a stand-in feature extractor."""
  from llmimg_jax.data.images import center_crop_resize
  from llmimg_jax.data.pipeline import load_source
  from llmimg_jax.eval import fid
  from llmimg_jax.eval.generate import generate_for_captions
  from llmimg_jax.eval.report import evaluate_inception, format_table
  data, _ = tiny_eval
  features = _MeanStdFeatures("inception.pth")
  results = evaluate_inception(sampler, data, features, num_samples=12, batch_size=8, seed=3)
  assert list(results["splits"]) == ["test"]  # the default where a test split exists
  r = results["splits"]["test"]
  source = load_source(data, "test")
  records = [source[i] for i in range(12)]
  generated = generate_for_captions(sampler.models, sampler.ema_params, sampler.text_params,
                                    sampler.tokenizer, [x["captions"][0] for x in records], 3, 8)
  real = np.stack([center_crop_resize(x["image"], data.image_size) for x in records])
  expected = fid.frechet_distance(*fid.statistics(features(generated)),
                                  *fid.statistics(features(real)))
  assert r["num_images"] == 12 and r["fid_inception"] > 0
  np.testing.assert_allclose(r["fid_inception"], expected, rtol=1e-6)
  table = format_table(results | {"workdir": str(run.workdir)})
  assert f"test: Inception FID {expected:.2f} over 12 images, against 12 real test images" in table
  json.dumps(results)
  # More images than the split has records: all of them, and a warning that says so.
  with caplog.at_level(logging.WARNING):
    results = evaluate_inception(sampler, data, features, num_samples=len(source) + 5)
  assert results["splits"]["test"]["num_images"] == len(source)
  assert (f"test has {len(source)} records: scoring {len(source)} images, not --num_samples "
          f"{len(source) + 5}") in caplog.text


def test_training_evaluator_logs_and_keeps_the_best_step(sampler, tiny_eval, tmp_path,
                                                         monkeypatch):
  from tensorboardX import SummaryWriter

  from llmimg_jax.eval import fid, in_training
  from llmimg_jax.eval.in_training import TrainingEvaluator, enabled
  from llmimg_jax.eval.shapes_eval import load_split
  data, _ = tiny_eval
  assert not enabled(tiny_config(data.data_dir))
  State, config = _to_evaluate(sampler, tiny_eval)
  assert enabled(config)
  evaluate = TrainingEvaluator(sampler.models, sampler.tokenizer, config, tmp_path)
  # The floor: 8 real train images against the 8 real test images whose captions are scored.
  train, test = (load_split(data, split, 8).at_size(config.data.image_size)
                 for split in ("train", "test"))
  features = evaluate.evaluator.features
  assert evaluate.floor == pytest.approx(fid.frechet_distance(
      *fid.statistics(features(train.images)), *fid.statistics(features(test.images))))
  assert evaluate.floor > 1e-3 and evaluate.captions == [c[0] for c in test.captions]
  writer = SummaryWriter(str(tmp_path / "tb"))
  best_json = tmp_path / "best.json"
  first = evaluate(State, 2, writer)
  best = json.loads(best_json.read_text(), parse_constant=pytest.fail)  # strict: no NaN
  assert best["step"] == 2 and best["caption_accuracy"] == first["caption_accuracy"]
  assert best["fid_floor"] == evaluate.floor
  again = evaluate(State, 4, writer)  # same params and noise: not better, best stays at step 2
  assert again["fid_indomain"] == pytest.approx(first["fid_indomain"])
  assert json.loads(best_json.read_text())["step"] == 2
  writer.close()
  assert list((tmp_path / "tb").glob("events.out.tfevents.*"))

  # Steps that score differently (stand-in accuracy and FID), in a fresh workdir: the highest
  # caption accuracy is kept, then the lowest FID.
  (tmp_path / "fresh").mkdir()
  evaluate = TrainingEvaluator(sampler.models, sampler.tokenizer, config, tmp_path / "fresh")
  best_json = tmp_path / "fresh" / "best.json"
  now = {}  # the stand-in scores of the step being evaluated
  score = evaluate.evaluator.score
  monkeypatch.setattr(evaluate.evaluator, "score", lambda images, captions: {
      **score(images, captions), "caption_accuracy": now["accuracy"],
      "relation": float("nan")})  # a metric without statements in the build
  monkeypatch.setattr(in_training.fid, "frechet_distance", lambda *stats: now["fid"])
  kept = {}
  for step, accuracy, fid_value, want_best in [(6, 0.5, 10.0, 6), (8, 0.75, 12.0, 8),
                                               (10, 0.25, 1.0, 8), (12, 0.75, 11.0, 12),
                                               (14, 0.75, 11.5, 12)]:
    now.update(accuracy=accuracy, fid=fid_value)
    kept[step] = evaluate(State, step, None)
    assert (kept[step]["caption_accuracy"], kept[step]["fid_indomain"]) == (accuracy, fid_value)
    best = json.loads(best_json.read_text(), parse_constant=pytest.fail)  # strict: NaN -> null
    assert best["step"] == want_best, step
    former = best.pop("former")  # the best it replaced
    assert best.pop("evaluated") == step  # the last step evaluated, even one not the best
    assert (former and former["step"]) == {6: None, 8: 6, 12: 8}[want_best], step
    assert best == {"step": want_best, **kept[want_best], "relation": None,
                    "fid_floor": evaluate.floor, "setup": {
                        "dataset": "captioned_shapes/tiny_32", "image_size": 32,
                        "num_samples": 8, "seed": config.seed + 2,
                        "evaluator": evaluate.evaluator.fingerprint}}
    assert evaluate.best_step == want_best


def test_reference_images_are_at_the_runs_image_size(tiny_eval):
  """A run trained below its build's resolution is compared with real images at its own size."""
  import ml_collections
  from llmimg_jax.data.images import center_crop_resize
  from llmimg_jax.eval.report import _reference
  data, _ = tiny_eval
  small = ml_collections.ConfigDict(data.to_dict())
  small.image_size = 16
  for split in ("test", "holdout"):
    stored, stored_other = _reference(data, split, 4, 8)
    real, other = _reference(small, split, 4, 8)
    assert stored.images.shape == (4, 32, 32, 3) and real.images.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(real.images,
                                  [center_crop_resize(x, 16) for x in stored.images])
    np.testing.assert_array_equal(other.images,
                                  [center_crop_resize(x, 16) for x in stored_other.images])
    assert real.captions == stored.captions


def test_train_split_is_refused_with_the_reason(run, tiny_eval):
  from llmimg_jax.eval.report import evaluate_run
  data, _ = tiny_eval
  with pytest.raises(ValueError, match=r"captioned_shapes/tiny_32: the train split is not scored "
                                       r"\(it is the reference set of test's in-domain FID\)"):
    evaluate_run(str(run.workdir), splits=["train"], data_dir=data.data_dir)


def test_ref_stats_without_inception_weights_is_refused(run):
  from llmimg_jax.eval.report import evaluate_run
  with pytest.raises(ValueError, match="--ref_stats holds statistics of Inception features: "
                                       "pass --inception_weights"):
    evaluate_run(str(run.workdir), ref_stats="coco_val256.npz")


def test_inception_fid_row_sits_in_the_fid_columns():
  from llmimg_jax.eval.report import ATTRIBUTE_COLUMNS, format_table
  scores = {"caption_accuracy": 0.5, **{m: 0.5 for m in ATTRIBUTE_COLUMNS}}
  results = {"step": 2, "workdir": "w", "evaluator": {}, "splits": {"test": {
      "num_images": 4, "generated": scores, "real": scores, "fid_indomain": 1.0,
      "fid_indomain_floor": 0.5, "fid_inception": 45.67, "fid_inception_floor": 3.21}}}
  head, *rows = format_table(results).splitlines()[1:]
  generated = next(r for r in rows if "(generated)" in r).split()
  assert generated[-2:] == ["1.000", "0.500"]  # FID(in-domain), then its floor
  row = next(r for r in rows if "Inception" in r)
  assert row.split()[-4:] == ["FID)", "4", "45.67", "3.21"]
  # right-aligned under their headers: FID(in-domain) and floor
  assert row.index("45.67") + 5 == head.index("FID(in-domain)") + len("FID(in-domain)")
  assert len(row) == len(head)
