"""Times reading a captioned folder's captions.jsonl (caption_files.read_captions), as every build
and every load of a folder with an unlisted image file does.

  python benchmarks/captions_read.py --lines 40000 --images 1
  python benchmarks/captions_read.py --lines 200000 --images 5000

Makes a folder of --images names (links to one 8x8 PNG) and a captions.jsonl of --lines lines,
line i naming image i % --images with its own caption, in a temporary folder; prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from PIL import Image

from llmimg_jax import cli
from llmimg_jax.data import caption_files


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--lines", type=cli.at_least(1), default=40_000)
  parser.add_argument("--images", type=cli.at_least(1), default=1)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as folder:
    Image.new("RGB", (8, 8)).save(os.path.join(folder, "a.png"))
    for i in range(args.images):
      os.symlink("a.png", os.path.join(folder, f"i{i}.png"))
    with open(os.path.join(folder, "captions.jsonl"), "w", encoding="utf-8") as f:
      f.writelines(json.dumps({"file": f"i{i % args.images}.png", "caption": f"c{i}"}) + "\n"
                   for i in range(args.lines))
    start = time.perf_counter()
    captions = caption_files.read_captions(folder, caption_files.Skips())
    seconds = time.perf_counter() - start
  print(json.dumps({"lines": args.lines, "images": args.images, "captioned": len(captions),
                    "seconds": round(seconds, 2)}))


if __name__ == "__main__":
  with cli.ends_on_signal("benchmarks/captions_read.py",
                          "nothing was timed (its temporary folder is removed): rerun it."):
    main()
