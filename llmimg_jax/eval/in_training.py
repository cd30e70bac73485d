"""Evaluation during training (shapes configs): caption accuracy and in-domain FID of the EMA
generator on a fixed subset of the test split, logged to TensorBoard; the best step so far is
kept in <workdir>/best.json (highest caption accuracy, then lowest FID; "evaluated": the last step
evaluated, which a rerun after a kill during an evaluation makes again), and its checkpoint is
kept beside the latest ones (the loop saves it if it was not a checkpoint step). best.json names
its evaluation (dataset, image size, number of captions, noise seed, the evaluator's weights): a
resume that evaluates otherwise starts the best over rather than compare incomparable scores.

config.eval.every = 0 disables it; config.eval.num_samples test captions (the first caption of
records [0, n)) with fixed noise; the FID reference is train records [0, n), as evaluate.py's, and
the real-vs-real floor (the same test records' real images against it) is computed once and logged
with every evaluation as eval/fid_floor, a flat line beside the FID.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import jax
import ml_collections

from llmimg_jax import output_files
from llmimg_jax.data.pipeline import dataset_id
from llmimg_jax.eval import fid
from llmimg_jax.eval.generate import generate_for_captions
from llmimg_jax.eval.report import to_json
from llmimg_jax.eval.shapes_eval import ShapesEvaluator, load_split
from llmimg_jax.train import checkpoint, hosts
from llmimg_jax.train.checkpoint import BEST_FILE

log = logging.getLogger(__name__)


def enabled(config: ml_collections.ConfigDict) -> bool:
  e = config.get("eval")
  return bool(e is not None and e.every > 0)  # validate() refuses it on other data


def _best_or_none(workdir: Path) -> dict | None:
  """<workdir>/best.json; None if there is none or it is unreadable (the evaluator says so and
  starts over)."""
  try:
    return checkpoint.read_best(Path(workdir) / BEST_FILE)
  except ValueError:
    return None


def evaluated(workdir: Path, step: int) -> bool:
  """Whether best.json records an evaluation at `step` or later: its "evaluated", the last step
  evaluated (a kill during an evaluation leaves the one before). A file from before that record
  counts as evaluated, as it did: its best step, read instead, made every finished run whose best
  came earlier evaluate its last step again on a rerun, warning of a stop that never was."""
  best = _best_or_none(workdir)
  try:
    return best is not None and int(best.get("evaluated", step)) >= step
  except (ValueError, TypeError, OverflowError):  # unreadable: the evaluation is made again
    return False


def superseded_best(workdir: Path, steps: list[int]) -> int | None:
  """The step of the best that best.json's replaced ("former"), if both checkpoints are among
  `steps`: the loop deletes it (unless among the latest) once the new best's checkpoint is saved,
  and a kill in between left it for good at the last step, which no later save cleans up."""
  best = _best_or_none(workdir)
  former = best.get("former") if best is not None and best["step"] in steps else None
  return former["step"] if isinstance(former, dict) and former.get("step") in steps else None


def set_aside_best_past(workdir: Path, start: int, steps: list[int]) -> None:
  """A best.json of a step after `start` (a fresh start over an old run, a fallback past damaged
  checkpoints, or a kill before the new best's checkpoint was complete) scores a checkpoint this
  run does not have: kept as best.json.stale, it would otherwise be compared with, and keep, this
  run's checkpoint of that step number (an earlier_best_*.json past `start` too). So is one of a
  step not among `steps` (its checkpoint deleted by hand, or moved aside as damaged): no later
  best would be kept. The best it replaced becomes best.json again if that one's checkpoint (of
  `steps`) is there: forgotten, it would be deleted by the next save."""
  best_file = workdir / checkpoint.BEST_FILE
  best = _best_or_none(workdir)

  def gone(step: int) -> str | None:
    """Why a best file naming `step` is set aside; None if it is kept."""
    if step > start:
      return f"past this run's step {start}"
    return None if step in steps else f"whose checkpoint is not in {workdir / 'checkpoints'}"

  stale = best is not None and gone(best["step"]) is not None
  former = best.get("former") if stale else None
  former = former if isinstance(former, dict) and former.get("step") in steps else None
  if jax.process_count() > 1:  # every host read it before host 0 moves it
    hosts.wait_for_all_hosts("best_read")

  def move() -> None:
    for step in sorted(s for s in checkpoint.earlier_best_steps(workdir) if gone(s)):
      earlier = workdir / checkpoint.EARLIER_BEST.format(step=step)  # keeps this run's step
      earlier.replace(earlier.with_name(earlier.name + ".stale"))
      log.warning("%s names step %d, %s; moved to %s.stale.", earlier, step, gone(step),
                  earlier.name)
    if stale:
      log.warning("%s names step %d, %s; moved to %s.stale%s.", best_file, best["step"],
                  gone(best["step"]), best_file.name,
                  "" if former is None else f" (the best before it, step {former['step']}, is "
                  f"{best_file.name} again)")
      best_file.replace(best_file.with_name(best_file.name + ".stale"))
      if former is not None:
        output_files.write_atomically(best_file, to_json(former))
    if kept := sorted(checkpoint.earlier_best_steps(workdir)):  # one per change of evaluation
      log.info("Checkpoints kept for the bests of earlier evaluations: step(s) %s; delete %s to "
               "let one go.", ", ".join(map(str, kept)),
               workdir / checkpoint.EARLIER_BEST.format(step="STEP"))
  hosts.on_host_0(move, "best_moved", f"move {best_file} aside")


class TrainingEvaluator:
  _cut_warned = False  # the same captions at every evaluation: their cut is warned of once

  def __init__(self, models, tokenizer, config: ml_collections.ConfigDict, workdir: Path, *,
               mesh: jax.sharding.Mesh | None = None):
    """`mesh`: what generates the images (generate_for_captions; train() passes its own)."""
    self.models, self.tokenizer, self.workdir = models, tokenizer, Path(workdir)
    self.mesh = mesh
    self.every, n = int(config.eval.every), int(config.eval.num_samples)
    self.seed = int(config.seed) + 2
    t0 = time.perf_counter()
    try:
      self._set_up(config, n)
      problem = None
    except Exception as e:  # pylint: disable=broad-except  # raised below, on every host
      problem = e
    # A failure on one host stops every host now: the others waited in the next collective
    # until the distributed service aborted them (5 minutes), naming nothing. An evaluator
    # trained on some hosts (a cold cache) takes minutes.
    if failed := hosts.failed_hosts(problem is None, "eval_set_up", timeout_s=6 * 3600):
      if problem is not None:
        raise problem
      raise RuntimeError(f"Host(s) {failed} could not set up the in-training evaluation "
                         "(config.eval); their logs have the error.")
    self.best_path = self.workdir / BEST_FILE
    self._rejected: str | None = None  # why this host (not host 0) rejected best.json
    self._other_setup: dict | None = None  # best.json, if scored on another evaluation
    self.best = self._host_0s_best(self._read_best())  # the best so far (host 0 writes it)
    hosts.on_host_0(self._keep_earlier_best, "earlier_best", f"move {self.best_path} aside")
    if self._rejected:  # logged once host 0's reading, which every host follows, is known
      log.warning("%s; %s.", self._rejected, "the next evaluation replaces it" if self.best is None
                  else f"host 0 keeps its best step {self.best['step']}, which every host follows "
                  "(host 0 compares the scores)")
    log.info("In-training eval on %d test captions every %d steps (setup %.1fs); real images "
             "score caption accuracy %.3f, FID floor %.3f.", len(self.captions), self.every,
             time.perf_counter() - t0, self.real_scores["caption_accuracy"], self.floor)

  def _set_up(self, config: ml_collections.ConfigDict, n: int) -> None:
    """This host's evaluator, captions, reference statistics and real images' scores."""
    self.evaluator = ShapesEvaluator.load_or_train(config.data)
    size = config.data.image_size  # real images at the resolution the run generates
    real = load_split(config.data, "test", n).at_size(size)
    if len(real.images) < n:  # FIDs of fewer images are not comparable with others of n
      log.warning("config.eval.num_samples=%d, but the test split of %s has %d records: the "
                  "evaluation scores those %d.", n, dataset_id(config.data), len(real.images),
                  len(real.images))
    self.captions = [c[0] for c in real.captions]
    # What the scores are of: best.json's are compared only with scores of the same evaluation.
    self.setup = {"dataset": dataset_id(config.data), "image_size": int(size),
                  "num_samples": len(self.captions), "seed": self.seed,
                  "evaluator": self.evaluator.fingerprint}
    # Not the scored records' own images: generated images conditioned on the very captions of
    # the reference scored below the floor (FID 97, floor 139 at n=64), which then was none.
    train = load_split(config.data, "train", len(real.images)).at_size(size)
    self.reference = fid.statistics(self.evaluator.features(train.images))
    self.floor = fid.frechet_distance(
        *fid.statistics(self.evaluator.features(real.images)), *self.reference)
    self.real_scores = self.evaluator.score(real.images, self.captions)

  def _read_best(self) -> dict | None:
    try:
      best = checkpoint.read_best(self.best_path)
      if best is not None:  # the scores compared with the next evaluation's, as numbers
        best.update({k: float(best[k]) for k in ("caption_accuracy", "fid_indomain")})
    except (ValueError, KeyError, TypeError, OverflowError) as e:
      self._reject(f"Could not read {self.best_path} ({e})")
      return None
    # Older files have no setup, or one without the seed and evaluator: compared on what they hold.
    setup = {} if best is None else best.get("setup", {})
    setup = setup if isinstance(setup, dict) else {"setup": setup}
    if changed := {k: (v, self.setup.get(k)) for k, v in setup.items() if self.setup.get(k) != v}:
      self._reject(f"{self.best_path} scores step {best['step']} on another evaluation than this "
                   f"run's ({', '.join(f'{k} {a!r} -> {b!r}' for k, (a, b) in changed.items())}): "
                   "its scores are not comparable")
      self._other_setup = best
      return None
    return best

  def _keep_earlier_best(self) -> None:
    """Host 0 moves a best.json scored on another evaluation aside: its step's checkpoint, which
    the next evaluation's best would let the loop delete, is kept (checkpoint._KeepBest)."""
    if self._other_setup is not None:
      step = int(self._other_setup["step"])
      earlier = self.workdir / checkpoint.EARLIER_BEST.format(step=step)
      self.best_path.replace(earlier)
      log.warning("Moved %s to %s: step %d's checkpoint is kept until that file is deleted.",
                  self.best_path, earlier, step)

  def _reject(self, why: str) -> None:
    """Logs why best.json is not compared; on a host other than 0, once host 0's reading (which
    every host follows, _host_0s_best) is known: host 0 may keep what this host rejected."""
    if jax.process_index() == 0:
      log.warning("%s; the next evaluation replaces it.", why)
    else:
      self._rejected = why

  @staticmethod
  def _host_0s_best(best: dict | None) -> dict | None:
    """Host 0's best step on every host: the loop deletes the former best's checkpoint and saves
    the best's (each a collective) by it, and a host whose own evaluator cache holds other
    weights than host 0's rejects a best.json that host 0 keeps. Host 0 compares the scores."""
    if jax.process_count() == 1:
      return best
    step = hosts.host_0s(-1 if best is None else best["step"])
    if step < 0:
      return None
    if best is None or best["step"] != step:  # scores that host 0's decisions overrule
      best = {"step": step, "caption_accuracy": math.nan, "fid_indomain": math.nan}
    return best

  @property
  def best_step(self) -> int | None:
    return None if self.best is None else self.best["step"]

  def __call__(self, state, step: int, writer) -> dict[str, float]:
    t0 = time.perf_counter()
    images = generate_for_captions(self.models, state.ema_params, state.text_params,
                                   self.tokenizer, self.captions,
                                   seed=self.seed % 2**32,  # config.seed + 2 may pass 2**32 - 1
                                   mesh=self.mesh, warn_cut=not self._cut_warned)
    self._cut_warned = True
    result = {k: v for k, v in self.evaluator.score(images, self.captions).items()
              if k != "num_images"}
    result["fid_indomain"] = fid.frechet_distance(
        *fid.statistics(self.evaluator.features(images)), *self.reference)
    result["seconds"] = time.perf_counter() - t0
    key = (result["caption_accuracy"], -result["fid_indomain"])
    improved = self.best is None or key > (self.best["caption_accuracy"],
                                          -self.best["fid_indomain"])
    # Host 0's decision everywhere: the loop saves the best step's checkpoint (a collective),
    # and hosts' float results may differ in the last bit.
    improved = bool(hosts.host_0s(improved))
    if improved:  # the best it replaces is kept in it, until this step's checkpoint is saved
      former = None if self.best is None else {k: v for k, v in self.best.items() if k != "former"}
      self.best = {"step": step, **result, "fid_floor": self.floor, "setup": self.setup,
                   "former": former}
    self.best["evaluated"] = step  # a rerun after a kill during this evaluation makes it again
    # Host 0 writes; if that fails (a full disk), every host stops now, not the others after
    # the distributed service's timeout (5 minutes, then SIGABRT).
    hosts.on_host_0(lambda: self._write(result, step, writer), "eval_written",
                    f"write {self.best_path} (or the evaluation's TensorBoard scalars)")
    return result

  def _write(self, result: dict[str, float], step: int, writer) -> None:
    # Strict JSON (a NaN metric, e.g. relations on a build without them, as null).
    output_files.write_atomically(self.best_path, to_json(self.best))
    if writer is not None:
      for k, v in result.items():
        if math.isfinite(v):  # a metric the build has no statements for is NaN: no point
          writer.add_scalar(f"eval/{k}", v, step)
      writer.add_scalar("eval/fid_floor", self.floor, step)
      writer.add_scalar("eval/real_caption_accuracy", self.real_scores["caption_accuracy"], step)
    log.info("Eval at step %d: caption accuracy %.3f, in-domain FID %.3f (floor %.3f), %.1fs.",
             step, result["caption_accuracy"], result["fid_indomain"], self.floor,
             result["seconds"])
