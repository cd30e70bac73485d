r"""python -m llmimg_jax.text --model DIR_OR_NAME --text "..." [--text ...]
                          [--encode_out FILE.npy [--overwrite]]

Prints one generated text per --text, each on one line: backslashes and line breaks in a text are
printed as Python escapes (\\, \n, \r, \u2028, ...). Or saves the encoder's last hidden states
(float32 [batch, max_length, d_model]) to --encode_out. Without --model: an untrained offline T5.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from collections.abc import Sequence

import numpy as np

from llmimg_jax import cli, console, platforms


# Options that only steer generation (--encode_out would ignore them), and sampling.
_GENERATION_OPTIONS = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_k", "top_p")
_SAMPLING_OPTIONS = ("temperature", "top_k", "top_p")


# Where str.splitlines breaks a line, and the backslash that starts an escape, as Python escapes.
_ESCAPES = str.maketrans({c: repr(c)[1:-1] for c in "\\\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"})


_PROG = "python -m llmimg_jax.text"


def _parser() -> argparse.ArgumentParser:
  # allow_abbrev=False: a prefix such as --tex is refused, not read as the option it begins
  p = argparse.ArgumentParser(prog=_PROG, description=__doc__, allow_abbrev=False,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default=None, help="checkpoint directory or hub name (default: "
                 "untrained byte-level T5 with the ByT5 tokenizer)")
  # Required, checked in parse_args: argparse names a required flag left out before unknown
  # ones, so a misspelt `--txt hi` read as if nothing had been typed.
  p.add_argument("--text", action="append", help="input text (required); repeatable")
  p.add_argument("--max_length", type=int, default=64, help="tokenizer length: each text is "
                 "padded or truncated to it (default: %(default)s)")
  p.add_argument("--max_new_tokens", type=int, default=32,
                 help="most tokens generated per text (default: %(default)s)")
  p.add_argument("--num_beams", type=int, default=1,
                 help="beam search over this many beams (default: %(default)s, greedy)")
  p.add_argument("--do_sample", action="store_true", help="sample instead of greedy or beam "
                 "search (with --temperature, --top_k, --top_p, --seed)")
  p.add_argument("--temperature", type=float, default=1.0,
                 help="sampling: logits divided by it (default: %(default)s)")
  p.add_argument("--top_k", type=int, default=50, help="sampling: keep the k likeliest tokens "
                 "(default: %(default)s, transformers'; 0: all)")
  p.add_argument("--top_p", type=float, default=1.0, help="sampling: keep the likeliest tokens "
                 "that hold this much probability (default: %(default)s, all)")
  p.add_argument("--seed", type=int, default=0, help="sampling seed, one for all texts; it also "
                 "initialises the untrained model without --model (default: %(default)s)")
  p.add_argument("--bf16", action="store_true", help="bfloat16 compute (params stay fp32)")
  p.add_argument("--encode_out", default=None,
                 help="save encoder states to this .npy instead of generating (an existing "
                 "file is refused before the model loads unless --overwrite; a link is written "
                 "through to its target)")
  p.add_argument("--overwrite", action="store_true", help="let --encode_out replace an existing "
                 "file")
  return p


def _error(message: str) -> int:
  """Prints `message` as argparse's own errors are (after the program's name); exit status 2."""
  cli.error(_PROG, message)
  return 2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = _parser()
  args = parser.parse_args(argv)  # unknown arguments refused first
  if args.text is None:
    parser.error("the following arguments are required: --text")  # argparse's own words
  return args


def _options_set(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
  """The options among `names` given values other than their defaults, as flags."""
  defaults = _parser()
  return [f"--{name}" for name in names if getattr(args, name) != defaults.get_default(name)]


def _npy_path(encode_out: str, overwrite: bool = False) -> str:
  """The .npy file --encode_out names (np.save adds the suffix), checked by
  output_files.check_output_file: its folder made and writable, an existing one refused unless
  `overwrite`, a link written through (as the shell's `>` and evaluate.py's --out)."""
  from llmimg_jax import output_files  # pylint: disable=g-import-not-at-top
  # '' is an unset shell variable; ' ' or 'DIR/' would save ' .npy', 'DIR/.npy' and an existing
  # DIR the sibling file DIR.npy. '~/s.npy' after '=', which no shell expands: expanded, as the
  # package's path flags are (after those checks: a Path drops the '/' and makes '' '.').
  names_no_file = not encode_out.strip() or encode_out.endswith(("/", os.sep))
  if not names_no_file:
    encode_out = str(output_files.flag_path(encode_out, "--encode_out"))
  if names_no_file or os.path.isdir(encode_out):
    raise OSError(f"--encode_out {encode_out!r} names no file; name the .npy file "
                  "for the states, e.g. --encode_out states.npy.")
  path = encode_out if encode_out.endswith(".npy") else encode_out + ".npy"
  output_files.check_output_file(path, "--encode_out", overwrite, "a .npy file")
  return path


def _save_atomically(path: str, states: np.ndarray) -> None:
  """np.save in one rename (a crash mid-write leaves the old file), through a link as `>`."""
  from llmimg_jax import output_files  # pylint: disable=g-import-not-at-top
  npy = io.BytesIO()
  np.save(npy, states)
  output_files.write_atomically(os.path.realpath(path), npy.getvalue())


def _flags_error(args: argparse.Namespace) -> str | None:
  """What is wrong with the flags, found before the model loads; None if nothing."""
  from llmimg_jax import cli
  from llmimg_jax.text.generator import check_seed
  try:
    check_seed(args.seed, "--seed")  # TextGenerator checks it too, after the model load
  except ValueError as e:
    return str(e)
  for i, text in enumerate(args.text):
    try:
      text.encode("utf-8")
    except UnicodeEncodeError:  # the tokenizer would read the surrogates as U+FFFD
      which = f"--text #{i + 1} of {len(args.text)}" if len(args.text) > 1 else "--text"
      return (f"{which} is not valid UTF-8 text ({text!r:.80}); set the terminal's encoding to "
              "UTF-8.")
  encode = args.encode_out is not None
  if args.overwrite and not encode:
    return ("--overwrite only applies to --encode_out (it lets that replace an existing file); "
            "drop it, or pass --encode_out.")
  if encode and (ignored := _options_set(args, _GENERATION_OPTIONS)):
    return (f"{cli.only_apply(ignored)} to generation, not to --encode_out (which saves encoder "
            f"states); drop {cli.them(ignored)} or drop --encode_out.")
  if not args.do_sample and (ignored := _options_set(args, _SAMPLING_OPTIONS)):
    # generate() would ignore them with a warning; on the command line that is a mistake.
    return (f"{cli.only_apply(ignored)} when sampling; pass --do_sample, or drop "
            f"{cli.them(ignored)} for greedy or beam-search generation.")
  if args.do_sample and args.num_beams > 1:  # generate() refuses it too, after loading the model
    return ("Beam sampling (--do_sample with --num_beams > 1) is not supported; drop "
            "--num_beams to sample, or --do_sample for beam search.")
  return _out_of_range(args)


def _out_of_range(args: argparse.Namespace) -> str | None:
  """A size or sampling value that the tokenizer or generate() would refuse after the model
  load (a hub download, for a name); None if none. NaN fails every comparison, so it is named."""
  if args.max_length < 2:
    return f"--max_length={args.max_length} must be >= 2 (room for one token and EOS)."
  if args.max_length >= 2**31:  # the tokenizer's arrays: the kernel's OOM kill, no message
    return f"--max_length={args.max_length} must be < 2**31 (int32 token positions)."
  if args.encode_out is not None:
    return None
  if bad := next((n for n in ("max_new_tokens", "num_beams") if getattr(args, n) < 1), None):
    return f"--{bad}={getattr(args, bad)} must be >= 1."
  if args.max_new_tokens >= 2**31:
    return f"--max_new_tokens={args.max_new_tokens} must be < 2**31 (an int32 step count)."
  if not args.do_sample:
    return None
  ranges = {"temperature": (cli.temperature_ok(args.temperature),
                            f"{cli.TEMPERATURES} (1: the model's own probabilities; "
                            "lower is greedy decoding: drop --do_sample)"),
            "top_p": (0 < args.top_p <= 1, "in (0, 1] (1: all tokens)"),
            "top_k": (args.top_k >= 0, ">= 0 (0: all tokens)")}
  return next((f"--{name}={getattr(args, name)} must be {what}."
               for name, (ok, what) in ranges.items() if not ok), None)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger("llmimg_jax").setLevel(logging.INFO)
  import jax
  import jax.numpy as jnp

  from llmimg_jax.text.generator import TextGenerator

  if error := _flags_error(args):
    return _error(error)
  platforms.start_backends(_PROG, 2)  # as its other errors
  encode = args.encode_out is not None
  try:
    # before the model load
    out_path = _npy_path(args.encode_out, args.overwrite) if encode else None
    gen = TextGenerator.from_pretrained(args.model, max_length=args.max_length,
                                        dtype=jnp.bfloat16 if args.bf16 else jnp.float32,
                                        seed=args.seed, encoder_only=encode)
  except (OSError, ValueError, ImportError) as e:
    return _error(str(e))
  try:
    batch = gen.tokenizer(args.text, fix="raise --max_length to keep such texts whole")
    if out_path:
      states = gen.encode_tokens(batch)
      _save_atomically(out_path, states)
      print(f"saved encoder states {states.shape} {states.dtype} to {out_path}")
      return 0
    texts = gen.generate_tokens(batch, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                num_beams=args.num_beams, do_sample=args.do_sample,
                                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
  except (ValueError, NotImplementedError) as e:  # generation options generate() refuses
    return _error(str(e))
  except (MemoryError, jax.errors.JaxRuntimeError) as e:  # e.g. --max_length 100000000
    sizes = ("--max_length or the number of --text" if encode else
             "--max_length, --max_new_tokens, --num_beams or the number of --text")
    if not (message := cli.out_of_memory(e, sizes)):
      raise
    return _error(message)
  for t in texts:
    print(t.translate(_ESCAPES))
  # The texts were its output: status 1 if they could not be written (stderr said why).
  return 1 if console.stdout_error() is not None else 0


if __name__ == "__main__":
  console.guard_stdout(_PROG)
  cli.check_cwd(_PROG)
  with cli.ends_on_signal(_PROG, "rerun the command."):
    sys.exit(main())
