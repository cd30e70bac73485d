r"""Samples images from a trained run (the EMA generator of its latest or a chosen checkpoint).

  python sample.py --workdir runs/quick --prompt "a red circle" --prompt "a blue square" \
      --num_per_prompt 4 --seed 0 --out samples/quick [--step 2000] [--truncation 0.88]
  python sample.py --workdir runs/quick --prompts_file prompts.txt --out samples/quick \
      --expand_with google/flan-t5-small --expand_template "Describe an image of: {prompt}"

Writes one PNG per image, grid.png (a row per prompt, its text underneath) and samples.jsonl
(per image: prompt, caption, seed, step, truncation and, with --expand_with, the expander's
model and settings).
The same --seed gives the same noise, so the same images, for any --batch_size or device count (up
to a uint8 step where XLA's float rounding differs between batch shapes). --truncation t scales
noise drawn from the standard normal truncated to [-2, 2] by t (DF-GAN's truncation trick, 0.88
in its scripts; resampling, not clipping). Works on any device count: a run trained on 8 devices
samples on one CPU.
"""
from typing import NoReturn

from absl import app, flags, logging

from llmimg_jax import cli, console
from llmimg_jax import output_files, platforms

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir (with checkpoints/).")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt; repeat the flag for more.")
_PROMPTS_FILE = flags.DEFINE_string(
    "prompts_file", None, "UTF-8 file, one prompt per line; blank lines and lines starting with "
    "'#' are skipped.")
_NUM = flags.DEFINE_integer("num_per_prompt", 4, "Images per prompt (grid columns).")
_SEED = flags.DEFINE_integer("seed", 0, "Noise seed; image j of each prompt uses fold_in(seed, j).")
_OUT = flags.DEFINE_string("out", None, "Output directory for PNGs, grid.png, samples.jsonl.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Replace the samples an earlier run left in --out (once the "
                               "new ones are written).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
_TRUNCATION = flags.DEFINE_float(
    "truncation", None, "DF-GAN's truncation trick: noise t * truncnorm(-2, 2), e.g. 0.88.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per jitted batch over all local devices, "
                               "rounded up to a multiple of their count.")
_EXPAND_WITH = flags.DEFINE_string(
    "expand_with", None, "Seq2seq T5 (directory or hub name) that expands prompts to captions.")
_EXPAND_TEMPLATE = flags.DEFINE_string("expand_template", "Describe an image of: {prompt}",
                                       "Expander input; {prompt} is replaced by the prompt.")
_EXPAND_BEAMS = flags.DEFINE_integer("expand_num_beams", 1, "Beams for expansion (1: greedy).")
_EXPAND_TOKENS = flags.DEFINE_integer("expand_max_new_tokens", 48, "Expansion length limit.")
_EXPAND_INPUT = flags.DEFINE_integer("expand_max_length", 64, "Expander input length limit "
                                     "(tokens of template + prompt; longer ones are cut).",
                                     lower_bound=2)
_EXPAND_SAMPLE = flags.DEFINE_bool("expand_do_sample", False, "Sample expansions (not greedy).")
_EXPAND_TEMPERATURE = flags.DEFINE_float("expand_temperature", 1.0, "Expansion sampling "
                                          "temperature (with --expand_do_sample).")
_EXPAND_TOP_P = flags.DEFINE_float("expand_top_p", 1.0, "Expansion nucleus sampling top_p (with "
                                   "--expand_do_sample).")
_EXPAND_OPTIONS = (_EXPAND_TEMPLATE, _EXPAND_BEAMS, _EXPAND_TOKENS, _EXPAND_INPUT, _EXPAND_SAMPLE,
                   _EXPAND_TEMPERATURE, _EXPAND_TOP_P)
flags.mark_flags_as_required(["workdir", "out"])


def run() -> None:
  # Inputs are checked before JAX and the checkpoint load: bad flags fail in a second.
  from llmimg_jax.sample.checks import (check_options, check_out_dir, check_out_outside_data,
                                        check_sample_args, read_prompts)
  prompts = read_prompts(_PROMPT.value, _PROMPTS_FILE.value)
  check_out_dir(_OUT.value, _OVERWRITE.value)
  check_out_outside_data(_OUT.value, _WORKDIR.value)
  check_sample_args(_NUM.value, _SEED.value, _TRUNCATION.value, flag="--")
  if _BATCH.value < 1:
    raise ValueError(f"--batch_size={_BATCH.value} must be >= 1.")
  if _EXPAND_WITH.value is not None and not _EXPAND_WITH.value.strip():  # e.g. "$MODEL" unset
    raise ValueError("--expand_with is empty; name the seq2seq T5 (a directory or hub name) "
                     "that expands the prompts, or drop the flag to sample the prompts as given.")
  if not _EXPAND_WITH.value and (given := [f"--{f.name}" for f in _EXPAND_OPTIONS if f.present]):
    raise ValueError(f"{cli.only_apply(given)} with --expand_with MODEL (a seq2seq T5 that "
                     f"expands the prompts); pass it or drop {cli.them(given)}.")
  if _EXPAND_WITH.value:
    check_options(_EXPAND_TEMPLATE.value, _EXPAND_TOKENS.value, _EXPAND_BEAMS.value,
                  _EXPAND_SAMPLE.value, _EXPAND_TEMPERATURE.value, _EXPAND_TOP_P.value,
                  flag="--expand_")

  import jax
  from llmimg_jax.sample import CaptionExpander, Sampler, write_samples
  platforms.start_backends("sample.py", 1)
  logging.info("JAX %s on %d local device(s): %s", jax.__version__, jax.local_device_count(),
               jax.local_devices())
  # The run first: a bad --workdir or --step fails before an expander downloads or loads.
  sampler = Sampler.from_workdir(_WORKDIR.value, _STEP.value, batch_size=_BATCH.value)
  if _EXPAND_WITH.value:
    sampler.expander = CaptionExpander.from_pretrained(
        _EXPAND_WITH.value, max_length=_EXPAND_INPUT.value, template=_EXPAND_TEMPLATE.value,
        num_beams=_EXPAND_BEAMS.value,
        max_new_tokens=_EXPAND_TOKENS.value, do_sample=_EXPAND_SAMPLE.value,
        temperature=_EXPAND_TEMPERATURE.value, top_p=_EXPAND_TOP_P.value, seed=_SEED.value)
  extra = ({"expander": {"model": _model_name(_EXPAND_WITH.value),
                          **sampler.expander.settings()}} if _EXPAND_WITH.value else None)
  result = sampler.sample(prompts, _SEED.value, _NUM.value, _TRUNCATION.value)
  write_samples(result, _OUT.value, extra, overwrite=_OVERWRITE.value)
  if result.expanded:
    for p, c in zip(result.prompts, result.captions):
      logging.info("Expanded %r -> %r", p, c)
  print(f"{len(result.images)} images of step {result.step} at {result.images_per_sec:.1f} "
        f"images/s (+{result.compile_seconds:.1f}s compilation) -> "
        # In full, as train.py's log.
        f"{output_files.in_full(output_files.flag_path(_OUT.value, '--out'))}")


def _model_name(path_or_name: str) -> str:
  """A local expander's folder in full (a relative one is lost with the directory it was named
  from, and reads as a hub name); a hub name as given."""
  path = output_files.flag_path(path_or_name, "--expand_with")
  return str(output_files.in_full(path)) if path.is_dir() else path_or_name


def main(argv: list[str]) -> None:
  if len(argv) > 1:  # absl leaves them: `--prompt a red circle` took "a"; `--overwrite false`
    cli.fail("sample.py", f"unexpected argument(s) {argv[1:]}: sample.py takes flags only. Quote "
             "a prompt of several words (--prompt \"a red circle\"), and give a boolean flag as "
             "--name or --noname (--nooverwrite, or --overwrite=false), not '--name false'; "
             "nothing was sampled.", 2)
  cli.quiet_orbax()
  try:
    run()
  except (ValueError, TypeError, OSError, ImportError) as e:
    _fail(str(e))  # ImportError: e.g. a PyTorch-pickle --expand_with without torch installed
  except (MemoryError, RuntimeError) as e:  # CheckpointError and JAX's errors are RuntimeErrors
    if (message := _runtime_error(e)) is None:
      raise
    _fail(message)


def _runtime_error(e: MemoryError | RuntimeError) -> str | None:
  """The line for a CheckpointError or an out-of-memory error (e.g. --expand_max_length
  1000000000); None for any other. JAX loads here, not before run(): its checks need no JAX."""
  import jax
  from llmimg_jax.sample.restore import CheckpointError
  if isinstance(e, CheckpointError):
    return str(e)
  if isinstance(e, (MemoryError, jax.errors.JaxRuntimeError)):
    return cli.out_of_memory(e, _memory_sizes())
  return None


def _memory_sizes() -> str:
  """The flags that size sampling's memory, the expander's first."""
  expander = "--expand_max_length, --expand_max_new_tokens, --expand_num_beams, "
  return f"{expander if _EXPAND_WITH.value else ''}--batch_size or --num_per_prompt"


def _fail(message: str) -> NoReturn:
  """Expected user errors: one clear line, no traceback (--verbosity=1 logs it too)."""
  logging.debug("sample.py failed", exc_info=True)
  cli.fail("sample.py", message, 1)


if __name__ == "__main__":
  console.guard_stdout("sample.py")
  # samples.jsonl, written last, indexes a complete set; a killed write leaves no staging folder.
  with cli.ends_on_signal("sample.py", "the samples were not all written: rerun the command."):
    app.run(main, flags_parser=cli.flags_parser("sample.py", required={
        "workdir": "name the train.py run to sample from (its --workdir), e.g. --workdir "
                   "runs/shapes_quick.",
        "out": "name a folder for the PNGs, grid.png and samples.jsonl, e.g. --out samples."}))
