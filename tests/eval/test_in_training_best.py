"""best.json across a resume: the best step's scores are only compared with scores of the same
evaluation (test captions, image size, dataset, noise seed, evaluator weights)."""
import json
import logging
import sys

from tests.eval.utils import _eval_config, _to_evaluate


def test_a_best_scored_on_another_evaluation_is_replaced_not_compared(
    sampler, tiny_eval, tmp_path, caplog):
  """Resumed with another config.eval.num_samples, the run compared its scores with a best.json
  scored on other captions and kept (or beat) that step by a comparison that means nothing."""
  from llmimg_jax.eval.in_training import TrainingEvaluator
  State, config = _to_evaluate(sampler, tiny_eval)
  TrainingEvaluator(sampler.models, sampler.tokenizer, config, tmp_path)(State, 2, None)
  assert json.loads((tmp_path / "best.json").read_text())["step"] == 2
  same = TrainingEvaluator(sampler.models, sampler.tokenizer, config, tmp_path)
  assert same.best_step == 2  # the same evaluation, resumed: still the best to beat
  same.best["caption_accuracy"] = -1.0  # so that step 3 beats it
  same(State, 3, None)
  best = json.loads((tmp_path / "best.json").read_text())
  # The best it replaced is kept in it (restored if step 3's checkpoint never completes).
  assert best["step"] == 3 and best["former"]["step"] == 2 and "former" not in best["former"]
  config.eval.num_samples = 4
  with caplog.at_level(logging.WARNING):
    other = TrainingEvaluator(sampler.models, sampler.tokenizer, config, tmp_path)
  assert "has 64 records" not in caplog.text
  assert other.best_step is None
  assert "best.json" in caplog.text and "num_samples" in caplog.text
  # Set aside, not forgotten: the loop would have deleted step 3's checkpoint at the next save.
  assert json.loads((tmp_path / "earlier_best_3.json").read_text()) == best
  assert "earlier_best_3.json: step 3's checkpoint is kept" in caplog.text
  other(State, 4, None)  # the first evaluation of this setup is the best so far
  assert json.loads((tmp_path / "best.json").read_text())["step"] == 4
  # More captions than the test split holds (64): capped with a warning (was without a word).
  config.eval.num_samples = 100
  with caplog.at_level(logging.WARNING):
    capped = TrainingEvaluator(sampler.models, sampler.tokenizer, config, tmp_path)
  assert len(capped.captions) == 64
  assert ("config.eval.num_samples=100, but the test split of captioned_shapes/tiny_32 has 64 "
          "records: the evaluation scores those 64.") in caplog.text


def test_a_best_scored_by_another_evaluator_or_seed_is_replaced_not_compared(
    sampler, tiny_eval, tmp_path, caplog):
  """A retrained (deleted cache) shapes evaluator, or another config.seed (the eval noise), scores
  the same step differently: best.json names both, and a resume compares only like with like.
  A best.json of an older version, without them, is still compared."""
  import flax.serialization
  import jax
  from llmimg_jax.eval.in_training import TrainingEvaluator
  from llmimg_jax.eval.shapes_eval import ShapesEvaluator
  data, cache = tiny_eval
  State, config = _to_evaluate(sampler, tiny_eval)
  first = TrainingEvaluator(sampler.models, sampler.tokenizer, config, tmp_path)
  first(State, 2, None)
  setup = json.loads((tmp_path / "best.json").read_text())["setup"]
  assert setup["seed"] == config.seed + 2
  assert setup["evaluator"] == first.evaluator.fingerprint
  assert len(setup["evaluator"]) == 16

  config.seed += 1
  with caplog.at_level(logging.WARNING):
    assert TrainingEvaluator(sampler.models, sampler.tokenizer, config, tmp_path).best_step is None
  assert "seed" in caplog.text
  config.seed -= 1
  (tmp_path / "earlier_best_2.json").replace(tmp_path / "best.json")  # set aside: put back

  # The cached evaluator retrained (other weights): its scores are not comparable.
  msgpack, = (cache / "evaluator").glob("*.msgpack")
  saved = msgpack.read_bytes()
  params = jax.tree.map(lambda x: x * 1.01, first.evaluator.params)
  msgpack.write_bytes(flax.serialization.to_bytes(params))
  try:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      retrained = TrainingEvaluator(sampler.models, sampler.tokenizer, config, tmp_path)
    assert retrained.evaluator.fingerprint != first.evaluator.fingerprint
    assert retrained.best_step is None and "evaluator" in caplog.text
  finally:
    msgpack.write_bytes(saved)
  (tmp_path / "earlier_best_2.json").replace(tmp_path / "best.json")
  assert ShapesEvaluator.load_or_train(data).fingerprint == first.evaluator.fingerprint

  # An older best.json (no seed, no evaluator) keeps its best.
  best = json.loads((tmp_path / "best.json").read_text())
  del best["setup"]["seed"], best["setup"]["evaluator"]
  (tmp_path / "best.json").write_text(json.dumps(best))
  assert TrainingEvaluator(sampler.models, sampler.tokenizer, config, tmp_path).best_step == 2


_BEST_ON_HOST = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from llmimg_jax.eval.in_training import TrainingEvaluator
from tests.eval.utils import _eval_config
config = _eval_config(sys.argv[3])
print("best step", TrainingEvaluator(None, None, config, sys.argv[4]).best_step, flush=True)
"""


def test_hosts_with_other_cached_evaluators_resume_host_0s_best(tiny_eval, tmp_path):
  """Each host trains or loads the shapes evaluator in its own cache: one whose cache holds other
  weights than host 0's rejected the best.json that host 0 kept, and the loop's collectives on
  the best step (deleting the former best's checkpoint, saving the best's) ran on some hosts only,
  which then waited for the others until JAX's timeouts aborted them."""
  import shutil

  import flax.serialization
  import jax
  from llmimg_jax.eval import shapes_eval
  from llmimg_jax.eval.in_training import TrainingEvaluator
  from tests.train.cli_utils import Proc, _devices_env, _free_port
  data, cache = tiny_eval
  config = _eval_config(data.data_dir)
  setup = TrainingEvaluator(None, None, config, tmp_path).setup  # host 0's evaluation
  (tmp_path / "best.json").write_text(json.dumps(
      {"step": 2, "caption_accuracy": 0.5, "fid_indomain": 9.0, "setup": setup}))
  other = tmp_path / "host1_cache"  # host 1's cache: an evaluator trained elsewhere
  shutil.copytree(cache, other)
  msgpack, = (other / "evaluator").glob("*.msgpack")
  template = flax.serialization.msgpack_restore(shapes_eval._unpack(msgpack.read_bytes()))
  msgpack.write_bytes(flax.serialization.to_bytes(jax.tree.map(lambda x: x * 1.01, template)))
  port = _free_port()
  procs = [Proc([sys.executable, "-c", _BEST_ON_HOST, f"127.0.0.1:{port}", str(i),
                 str(data.data_dir), str(tmp_path)], LLMIMG_CACHE_DIR=str(c), **_devices_env(1))
           for i, c in enumerate((cache, other))]
  for i, proc in enumerate(procs):
    assert proc.finish(timeout=180) == 0, f"process {i}:\n{proc.output[-3000:]}"
  assert ["best step 2" in p.output for p in procs] == [True, True], [
      p.output[-2000:] for p in procs]
  # Host 1 logged "the next evaluation replaces it", although host 0's best was kept.
  assert "not comparable" not in procs[0].output, procs[0].output[-2000:]
  assert "the next evaluation replaces it" not in procs[1].output, procs[1].output[-2000:]
  assert ("its scores are not comparable; host 0 keeps its best step 2, which every host "
          "follows (host 0 compares the scores)") in procs[1].output, procs[1].output[-2000:]


def test_between_equal_caption_accuracies_the_lower_fid_is_the_best(tmp_path, monkeypatch):
  """The best step: the highest caption accuracy, then the lowest in-domain FID (scores made up
  here: nothing generated)."""
  import numpy as np
  from llmimg_jax.eval import fid, in_training
  rng = np.random.default_rng(0)
  reference = rng.normal(size=(16, 4))
  shifts = {2: 3.0, 4: 1.0, 6: 2.0}  # the FID of each step grows with its features' shift

  class Scores:
    def score(self, images, captions):
      return {"caption_accuracy": 0.5, "num_images": len(captions)}

    def features(self, images):
      return reference + shifts[images]

  evaluator = in_training.TrainingEvaluator.__new__(in_training.TrainingEvaluator)
  evaluator.__dict__.update(
      models=None, tokenizer=None, mesh=None, captions=["a red circle"] * 16, seed=2,
      evaluator=Scores(), reference=fid.statistics(reference), floor=0.0,
      setup={"num_samples": 16}, best=None, best_path=tmp_path / "best.json")
  state = type("State", (), {"ema_params": None, "text_params": None})
  fids = {}
  for step in (2, 4, 6):  # the "images" of a step: its number
    monkeypatch.setattr(in_training, "generate_for_captions", lambda *a, s=step, **k: s)
    fids[step] = evaluator(state, step, None)["fid_indomain"]
  assert fids[4] < fids[6] < fids[2]
  best = json.loads(evaluator.best_path.read_text())
  assert best["step"] == 4 and best["evaluated"] == 6
