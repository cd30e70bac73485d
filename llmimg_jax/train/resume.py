"""A run's start in its workdir, before its first step: what a resumed run finds there (the best
evaluated step, the sample grid and evaluation a kill lost, whether anything is left to do) and
the files every run writes (config.json, the pretrained T5's tokenizer and config)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import ml_collections
import orbax.checkpoint as ocp

from llmimg_jax import output_files
from llmimg_jax.eval import in_training
from llmimg_jax.train import checkpoint, hosts
from llmimg_jax.train.config import due
from llmimg_jax.train.config_values import config_diff, config_values, describe_changes
from llmimg_jax.train.samples import grid_name
from llmimg_jax.text import T5Config, TextTokenizer
from llmimg_jax.train.state import TEXT_DIR, load_text_files, save_text_files

log = logging.getLogger(__name__)


class BestFileError(checkpoint.CorruptCheckpointError):
  """WORKDIR/best.json cannot be read: the checkpoint of the step it names would not be kept."""


def check_best_file(workdir: Path) -> None:
  """A BestFileError, on every host, if WORKDIR/best.json cannot be read on one: its step's
  checkpoint, kept by it, would be deleted at the next save."""
  best_file = workdir / checkpoint.BEST_FILE
  try:
    checkpoint.read_best(best_file)
    problem = None
  except ValueError as e:
    problem = str(e)
  if failed := hosts.failed_hosts(problem is None):
    raise BestFileError(
        f"{best_file} cannot be read ({problem or f'on host(s) {failed}, which log why'}): it "
        "names the best evaluated step, whose checkpoint the run keeps, and would otherwise "
        'delete at its next save. Restore the file (e.g. {"step": N, ...} as the run wrote it), '
        "or delete it to let that checkpoint go; then rerun the same command.")


def tidy_best(workdir: Path, manager: ocp.CheckpointManager, start: int,
              config: ml_collections.ConfigDict) -> None:
  """The evaluation's best step as a run resumed at `start` finds it: one past `start` set
  aside, a superseded one's checkpoint dropped (in_training)."""
  in_training.set_aside_best_past(workdir, start, manager.all_steps())
  if (former := in_training.superseded_best(workdir, manager.all_steps())) is not None:
    checkpoint.drop_former_best(manager, former, config.train.keep_checkpoints)


def unmade(workdir: Path, step: int, config: ml_collections.ConfigDict) -> tuple[bool, bool]:
  """Whether the sample grid and the evaluation due at `step`, where the run resumes, are missing
  (host 0's view, on every host): a kill during them, after the step's checkpoint, lost them, for
  good at the last step, which a rerun did not train again."""
  t, trained = config.train, 0 < step <= config.train.steps
  grid = trained and due(step, t.sample_every, t.steps) and not (
      workdir / "samples" / grid_name(step)).exists()
  evaluation = trained and in_training.enabled(config) and due(
      step, config.eval.every, t.steps) and not in_training.evaluated(workdir, step)
  return bool(hosts.host_0s(grid)), bool(hosts.host_0s(evaluation))


def nothing_to_do(workdir: Path, start: int, config: ml_collections.ConfigDict,
                  grid_unmade: bool, eval_unmade: bool) -> bool:
  """Whether a run resumed at `start` has neither steps to train nor a sample grid or evaluation
  to make; at or past config.train.steps, it logs which."""
  if start < config.train.steps:
    return False
  if missing := " and ".join(["sample grid"] * grid_unmade + ["evaluation"] * eval_unmade):
    log.warning("The run in %s is at its last step, %d: nothing to train; making the step's %s, "
                "which a stop cut short.", workdir, start, missing)
    return False
  log.warning("The run in %s is at step %d, at or past config.train.steps=%d: nothing to "
              "train; its config.json and checkpoints are left as they are. Raise "
              "--config.train.steps to train further.", workdir, start, config.train.steps)
  return True


def write_config(workdir: Path, config: ml_collections.ConfigDict) -> None:
  """WORKDIR/config.json, replaced atomically; a differing (or unreadable) old one is logged: a
  warning, unless only train.steps changed (how a run is trained further)."""
  path = workdir / "config.json"
  if path.exists():
    try:
      saved = json.loads(path.read_text())
      if not isinstance(saved, dict):
        raise ValueError(f"a JSON {type(saved).__name__}, not an object")
    except (OSError, ValueError) as e:  # e.g. left empty by a crash: it is rewritten below
      log.warning("Could not read %s (%s); it is replaced by this run's config.", path, e)
    else:
      diff = config_diff(saved, config_values(config))
      if diff.keys() == {"train.steps"}:
        log.info("The run continues to step %d (%s since %s).", config.train.steps,
                 describe_changes(diff)[0], path)
      elif diff:
        log.warning("%s differs from this run's config (%s); the new config is used and saved.",
                    path, "; ".join(describe_changes(diff)))
  output_files.write_atomically(path, json.dumps(config_values(config), indent=2))


def write_run_files(workdir: Path, config: ml_collections.ConfigDict, tokenizer, t5_config,
                    fresh: bool) -> None:
  """config.json and, for a pretrained T5 (config.text.checkpoint), its tokenizer and config:
  anew on a `fresh` start, which may be on another T5. Called on every host, written by host 0:
  a failure there (a full disk) stops every host, not the others at the distributed service's
  timeout."""
  def write() -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    write_config(workdir, config)
    if config.text.checkpoint:
      save_text_files(workdir, tokenizer, t5_config, replace=fresh)
  hosts.on_host_0(write, "run_files_written", f"write {workdir / 'config.json'}")


# T5Config fields that leave a training run's encoder as it is: the decoder's, and dropout (the
# encoder runs deterministic).
_NOT_ENCODER = ("num_decoder_layers", "decoder_start_token_id", "scale_decoder_outputs",
                "tie_word_embeddings", "dropout_rate")


def _tokenizer_change(saved: TextTokenizer, now: TextTokenizer, texts: list[str]) -> str | None:
  """How `now` tokenizes differently from `saved`: a text's ids, or the vocabulary."""
  def ids(tokenizer: TextTokenizer, text: str) -> list[int]:
    tokens = tokenizer.tokenize([text])[0]
    return tokens["input_ids"][0][tokens["attention_mask"][0] > 0].tolist()

  for text in texts:
    if (before := ids(saved, text)) != (after := ids(now, text)):
      return f"{text!r}: {before} -> {after}"
  return None if saved.hf.get_vocab() == now.hf.get_vocab() else "another vocabulary"


def check_text_files(workdir: Path, config: ml_collections.ConfigDict, tokenizer: TextTokenizer,
                     t5_config: T5Config) -> None:
  """ConfigMismatchError if a resumed run's config.text.checkpoint holds another tokenizer or T5
  config than WORKDIR/text, those the run started with, which sample.py and evaluate.py read (its
  encoder weights are in the checkpoints)."""
  saved_dir = workdir / TEXT_DIR
  if not config.text.checkpoint or not (saved_dir / "config.json").is_file():
    return  # a T5 of the config's own, or a run from before WORKDIR/text
  try:
    saved_tokenizer, saved_config = load_text_files(saved_dir, config.text.max_length)
  except (OSError, ValueError, TypeError) as e:  # e.g. files copied in by hand, one cut short
    log.warning("Could not read the run's tokenizer and T5 config in %s (%s: %s), so they are "
                "not compared with config.text.checkpoint's; sample.py reads them: restore the "
                "files the run started with.", saved_dir, type(e).__name__, e)
    return
  saved = saved_config.to_dict()
  changes = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in t5_config.to_dict().items()
             if k not in _NOT_ENCODER and saved.get(k) != v]
  held = [f"another T5 config ({'; '.join(changes)})"] if changes else []
  probes = [*config.train.sample_prompts, "Zürich, 東京 & 42 — ok?"]
  if why := _tokenizer_change(saved_tokenizer, tokenizer, probes):
    held.append(f"another tokenizer ({why})")
  if not held:
    return
  trained = ""
  try:
    first = json.loads((workdir / "config.json").read_text())["text"]["checkpoint"]
    trained = f" ({first!r} in {workdir / 'config.json'})"
  except (OSError, ValueError, KeyError, TypeError):  # unreadable: the advice stands without it
    pass
  raise checkpoint.ConfigMismatchError(
      f"The checkpoints in {workdir / 'checkpoints'} were trained with the tokenizer and T5 config "
      f"in {saved_dir}, but config.text.checkpoint={config.text.checkpoint!r} holds "
      f"{' and '.join(held)}. Rerun with the text.checkpoint the run was trained with{trained}, or "
      "pass a new --workdir for a new run. Nothing was trained.")
