r"""Builds a dataset and optionally writes a preview grid of examples with their captions.

  python -m llmimg_jax.data.prepare --dataset captioned_shapes/64 --data_dir ~/tensorflow_datasets \
      --preview shapes.png
  python -m llmimg_jax.data.prepare --dataset captioned_folder --folder my_photos --image_size 128
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

import ml_collections
import numpy as np
from PIL import Image

from llmimg_jax import cli, console
from llmimg_jax import output_files
from llmimg_jax.data import pipeline
from llmimg_jax.data.folder_names import walked_folders
from llmimg_jax.data.images import center_crop_resize
from llmimg_jax.images import captioned_grid

log = logging.getLogger(__name__)
# configs/folder_64.py's data.store_size (64px crops of 72px images): prepare's default build is
# the one it trains on (tests/data/test_prepare_and_coco.py keeps the two equal).
FOLDER_STORE_SIZE = 72


def preview_grid(source: pipeline.ExampleSource, num: int = 16, columns: int = 4, cell: int = 160,
                 lines: int = 5) -> Image.Image:
  """Examples (centre squares scaled to `cell` px) with their first caption wrapped underneath."""
  examples = [source[i] for i in range(min(num, len(source)))]
  if not examples:  # min(cell, *()) below would fail as "'int' object is not iterable"
    raise ValueError(f"preview_grid: no examples to show (num={num} of a source of "
                     f"{len(source)}); pass a source with examples and num >= 1.")
  images = [np.asarray(ex["image"], np.uint8) for ex in examples]  # [h, w, 3] each
  side = min(cell, *(min(im.shape[:2]) for im in images))  # a common size (coco's vary)
  images = np.stack([center_crop_resize(im, side) for im in images])  # [n, s, s, 3]
  return captioned_grid(images, [ex["captions"][0] for ex in examples], columns=columns,
                        cell=cell, max_lines=lines)


def _pil_can_save(ext: str) -> bool:
  """Whether PIL writes images with this extension (it reads more formats than it writes)."""
  Image.init()
  if ext not in Image.registered_extensions():
    return False
  try:
    Image.new("RGB", (1, 1)).save(io.BytesIO(), format=Image.registered_extensions()[ext])
  except (KeyError, OSError, ValueError):
    return False
  return True


def check_preview_path(path: str, overwrite: bool = False) -> None:
  """Raises ValueError if the grid could not be saved to `path` (checked before the build, which
  can take hours), or if `path` exists and not `overwrite` (output_files.check_output_file: its
  folder is made if missing; a link is written through, and its target must not exist)."""
  ext = os.path.splitext(path)[1].lower()
  if ext in (".ico", ".icns"):
    raise ValueError(f"--preview {path!r} is an icon, which PIL writes at icon sizes (the grid "
                     "shrunk or stretched); name a .png file, e.g. --preview grid.png.")
  if os.path.isdir(path) or not _pil_can_save(ext):
    raise ValueError(f"--preview {path!r} is not the name of an image file PIL can write; name a "
                     ".png file, e.g. --preview grid.png.")
  output_files.check_output_file(path, "--preview", overwrite, "an image file", error=ValueError)


def refuse_existing(path: str, overwrite: bool) -> None:
  """ValueError if the --preview `path` exists (a link's target: save_preview writes through it,
  as evaluate.py's --out), unless `overwrite`."""
  output_files.refuse_existing(path, f"--preview {path!r}", overwrite, error=ValueError)


def save_preview(grid: Image.Image, path: str) -> None:
  """`grid` written to `path` in one rename (a crash mid-write leaves the previous file), in the
  format its extension names; through a link as `>` does."""
  data = io.BytesIO()
  grid.save(data, format=Image.registered_extensions()[os.path.splitext(path)[1].lower()])
  output_files.write_atomically(os.path.realpath(path), data.getvalue())


def check_args(args: argparse.Namespace) -> None:
  """Raises ValueError for an unknown --dataset (or config of it), or a flag the --dataset needs
  but lacks, or would ignore."""
  name, _, config = args.dataset.partition("/")
  if name not in pipeline.DATASETS:  # the data config's error named data.name
    raise ValueError(f"--dataset {args.dataset}: no dataset {name!r}; name one of "
                     "captioned_shapes[/CONFIG], captioned_folder, coco_captions.")
  if config and name != "captioned_shapes":  # it would be ignored without a word
    raise ValueError(f"--dataset {args.dataset}: {name} has no configs to choose (/{config} "
                     f"would be ignored); give --dataset {name}.")
  # An unknown config named; a split refused after the whole build (hours for a large folder)
  # by the split's load.
  if (splits := _splits(args.dataset)) and args.split not in splits:
    choices = " or ".join([", ".join(splits[:-1]), splits[-1]] if splits[1:] else splits)
    raise ValueError(f"--split {args.split}: {args.dataset} has no split {args.split!r}; "
                     f"give --split {choices}.")
  if name == "captioned_folder":
    if not args.folder:
      raise ValueError("--dataset captioned_folder needs --folder DIR: your images with "
                       "captions.jsonl or captions.csv.")
  elif given := [f"--{k}" for k in ("folder", "image_size", "max_pixels") if getattr(args, k)]:
    raise ValueError(f"{cli.only_apply(given)} to --dataset captioned_folder ({args.dataset} "
                     f"stores its images at its own size); drop {cli.them(given)}.")
  if name == "captioned_folder" and args.preview and _in_folder(args.preview, args.folder):
    raise ValueError(f"--preview {args.preview!r} is inside --folder {args.folder} (or a folder "
                     "linked into it): the grid would be an image added to the folder, whose "
                     "build is then reported as changed; write it elsewhere, e.g. --preview "
                     "../grid.png.")
  if args.num_proc and name != "captioned_shapes":
    raise ValueError(f"--num_proc only applies to --dataset captioned_shapes ({args.dataset} is "
                     "built in one process); drop it.")
  if args.max_pixels < 0:  # every image would be skipped as too_large
    raise ValueError(f"--max_pixels={args.max_pixels} must be >= 0 (0 = PIL's limit).")
  if args.num_proc < 0:  # CaptionedShapes builds in this one process below 2
    raise ValueError(f"--num_proc={args.num_proc} must be >= 0 (0 = automatic).")
  if args.overwrite and not args.preview:
    raise ValueError("--overwrite only applies with --preview (it lets that replace an existing "
                     "file); drop it.")


def _in_folder(path: str, folder: str) -> bool:
  """Whether `path` is in a folder the build of `folder` walks: links into it are followed."""
  if output_files.inside(path, folder):
    return True
  real, inner = (os.path.realpath(os.path.expanduser(p)) for p in (path, folder))
  roots = {os.path.realpath(root) for root, _ in walked_folders(os.path.expanduser(folder))}
  return any(os.path.commonpath([real, root]) == root
             for root in roots if os.path.commonpath([inner, root]) != inner)  # linked ones


def _splits(dataset: str) -> list[str] | None:
  """The splits of a --dataset that builds here (coco_captions: TFDS's, None); a ValueError for
  a captioned_shapes config there is none of."""
  name, _, config = dataset.partition("/")
  if name == "captioned_folder":
    return ["train"]
  if name != "captioned_shapes":
    return None
  from llmimg_jax.data import captioned_shapes  # pylint: disable=g-import-not-at-top
  config = config or pipeline.default_data_config().config
  return list(captioned_shapes.builder_config(config, f"--dataset {dataset}").split_sizes())


def data_config_from_args(args: argparse.Namespace) -> ml_collections.ConfigDict:
  cfg = pipeline.default_data_config()
  name, _, config = args.dataset.partition("/")
  cfg.name = name
  if config:
    cfg.config = config
  if args.data_dir:
    cfg.data_dir = args.data_dir
  if args.folder:
    cfg.folder = args.folder
  if name == "captioned_shapes":
    from llmimg_jax.data import captioned_shapes  # pylint: disable=g-import-not-at-top
    # check_args refused --image_size and unknown configs
    cfg.image_size = captioned_shapes.builder_config(cfg.config, "--dataset").resolution
  else:
    cfg.image_size = args.image_size or FOLDER_STORE_SIZE
    cfg.max_pixels = args.max_pixels
  cfg.build_num_proc = args.num_proc
  return cfg


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", required=True,
                      help="NAME[/CONFIG]: captioned_shapes/64_small, captioned_folder, "
                           "coco_captions")
  parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: "
                      "$LLMIMG_DATA_DIR, $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  parser.add_argument("--folder", default=None, help="captioned_folder: images + captions")
  parser.add_argument("--image_size", type=int, default=0,
                      help=f"captioned_folder: stored resolution (default {FOLDER_STORE_SIZE}, "
                           "what configs/folder_64.py reads)")
  parser.add_argument("--max_pixels", type=int, default=0,
                      help="captioned_folder: skip images of more pixels (default 0: PIL's "
                           "limit, 89.5 MP); train.py reads this build with the same "
                           "--config.data.max_pixels")
  parser.add_argument("--split", default="train")
  parser.add_argument("--preview", default=None, help="write a PNG grid of examples here (an "
                      "existing file is refused before the build unless --overwrite; a link is "
                      "written through to its target)")
  parser.add_argument("--overwrite", action="store_true",
                      help="let --preview replace an existing file")
  parser.add_argument("--num_proc", type=int, default=0,
                      help="captioned_shapes: build processes (0 = auto)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

  start = time.perf_counter()
  try:
    if args.preview is not None and not args.preview:  # '' would build and write no grid
      raise ValueError(cli.blank_flag("--preview", "FILE",
                                      "name the .png file for the grid, or drop the flag"))
    if args.data_dir is not None and not args.data_dir.strip():  # '' would build in the default one
      raise ValueError(cli.blank_flag(
          "--data_dir", "DIR", "name the TFDS data directory, or drop the flag for "
          "$LLMIMG_DATA_DIR, $TFDS_DATA_DIR or ~/tensorflow_datasets"))
    if args.preview:  # no shell expands ~ after '='; else a folder named '~'
      args.preview = output_files.expand_output(args.preview, "--preview")
    check_args(args)
    cfg = data_config_from_args(args)
    if args.preview:
      check_preview_path(args.preview, args.overwrite)
    # TFDS prints its "Downloading and preparing dataset ..." lines to stdout: stdout is the
    # JSON report alone (for `| jq`), so they go to stderr with the other build output.
    with contextlib.redirect_stdout(sys.stderr):
      source = pipeline.load_source(cfg, args.split)
  except ValueError as e:  # a bad folder (FolderError) or data config, e.g. a missing --folder
    # The data config's checks name its keys; here this command's flags set them.
    message = pipeline.keys_as_flags(str(e), ("folder", "data_dir", "image_size", "max_pixels"))
    parser.exit(2, f"{parser.prog}: error: {message}\n")
  seconds = time.perf_counter() - start
  report = {"dataset": args.dataset, "split": args.split, "num_examples": len(source),
            "seconds": round(seconds, 1), "data_dir": cfg.data_dir}
  if cfg.name == "captioned_folder":
    from llmimg_jax.data import captioned_folder  # pylint: disable=g-import-not-at-top
    report["summary"] = captioned_folder.summary_of(pipeline.folder_builder(cfg))
  if args.preview:
    try:
      refuse_existing(args.preview, args.overwrite)  # nor one written during the build
    except ValueError as e:
      parser.exit(2, f"{parser.prog}: error: {e}\n")
    grid = preview_grid(source)  # a build that cannot be read is not a --preview to change
    try:
      save_preview(grid, args.preview)
    except OSError as e:  # its folder removed during the build, a full disk
      parser.exit(2, f"{parser.prog}: error: could not write --preview {args.preview!r} "
                     f"({type(e).__name__}: {e.strerror or e}); the dataset is built in "
                     f"{cfg.data_dir}: run prepare again with a --preview it can write (the build "
                     "is reused).\n")
    report["preview"] = args.preview
  print(json.dumps(report, indent=2))
  return report


if __name__ == "__main__":
  console.guard_stdout("prepare.py")
  cli.check_cwd("prepare.py")
  with cli.ends_on_signal("prepare.py", "a build it had not finished is not kept (TFDS): rerun "
                          "the command."):
    main()
