"""Times building captioned_shapes (default: config 64, 50,000 train + 2,000 test + 2,000 holdout).

  python benchmarks/data_build.py --config 64 --data_dir /tmp/bench_tfds [--num_proc 2]

Builds into a fresh subfolder of --data_dir each time (an existing build would be reused).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from llmimg_jax import cli, output_files
from llmimg_jax.data import captioned_shapes


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="64")
  parser.add_argument("--data_dir", default="/tmp/bench_tfds")
  parser.add_argument("--num_proc", type=cli.at_least(0), default=0, help="0 = automatic")
  parser.add_argument("--keep", action="store_true", help="keep the built dataset")
  args = parser.parse_args()
  try:
    captioned_shapes.builder_config(args.config, f"--config {args.config}")
  except ValueError as e:
    parser.error(str(e))
  try:
    os.makedirs(args.data_dir, exist_ok=True)
  except OSError as e:
    parser.error(f"--data_dir {args.data_dir}: {e.strerror}; pass a folder it can create.")
  if problem := output_files.cannot_write(args.data_dir):
    parser.error(f"--data_dir {args.data_dir}: {problem}; pass a folder it can write.")
  out = os.path.join(args.data_dir, f"build_{args.config}_{os.getpid()}")
  try:
    start = time.perf_counter()
    builder = captioned_shapes.CaptionedShapes(config=args.config, data_dir=out,
                                               num_proc=args.num_proc or None)
    builder.download_and_prepare()
    seconds = time.perf_counter() - start
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
    total = sum(s.num_examples for s in builder.info.splits.values())
  except BaseException:  # a Ctrl-C's or a failure's partial build, --keep or not
    shutil.rmtree(out, ignore_errors=True)
    raise
  if not args.keep:
    shutil.rmtree(out)
  print(json.dumps({"config": args.config, "examples": total, "seconds": round(seconds, 1),
                    "images_per_s": round(total / seconds, 1),
                    "num_proc": builder._num_proc,  # pylint: disable=protected-access
                    "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                    "disk_mb": round(size / 2**20, 1)}))


if __name__ == "__main__":
  with cli.ends_on_signal("benchmarks/data_build.py",
                          "the partial build was removed: rerun the command."):
    main()
