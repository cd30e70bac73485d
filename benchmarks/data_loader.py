"""Loader throughput: images/s of the grain pipeline (decode, crop/flip, resize, tokenize, batch).

  python benchmarks/data_loader.py --data_dir DIR --config 64 --workers 2 --batch 64

Builds captioned_shapes/CONFIG first if it is missing. Reports the steady-state rate after
--warmup batches, and the CPU time per batch of the process and of its main thread (the one that
trains: with --workers 0 it runs the crop/flip, batching and tokenizing, and grain's prefetch
bookkeeping).
"""
from __future__ import annotations

import argparse
import json
import os
import time

from llmimg_jax import cli
from llmimg_jax.data import pipeline
from llmimg_jax.text.tokenizer import load_tokenizer


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data_dir", default=os.path.expanduser("~/tensorflow_datasets"))
  parser.add_argument("--config", default="64")
  parser.add_argument("--image_size", type=cli.at_least(1), default=None,
                      help="default: the resolution --config stores")
  parser.add_argument("--workers", type=cli.at_least(0), default=2)
  parser.add_argument("--batch", type=cli.at_least(1), default=64)
  parser.add_argument("--warmup", type=cli.at_least(0), default=5)
  parser.add_argument("--steps", type=cli.at_least(1), default=50)
  parser.add_argument("--max_length", type=cli.at_least(2), default=64)
  parser.add_argument("--read_threads", type=cli.at_least(0), default=0, help="0 = grain's default")
  parser.add_argument("--read_buffer", type=cli.at_least(0), default=0,
                      help="data.read_buffer_size (0 = the pipeline's default)")
  parser.add_argument("--augment", action="store_true", help="random crop 0.8 + flip")
  args = parser.parse_args()
  from llmimg_jax.data import captioned_shapes
  try:
    resolution = captioned_shapes.builder_config(args.config, f"--config {args.config}").resolution
  except ValueError as e:
    parser.error(str(e))
  if args.image_size is None:  # a default of 64 refused --config 32, naming data.image_size
    args.image_size = resolution
  elif args.image_size > resolution:
    parser.error(f"--image_size {args.image_size}: captioned_shapes/{args.config} stores "
                 f"{resolution}px images; drop --image_size or pick a larger --config.")

  cfg = pipeline.default_data_config()
  cfg.update(name="captioned_shapes", config=args.config, data_dir=args.data_dir,
             image_size=args.image_size, num_workers=args.workers, worker_buffer_size=2,
             random_crop=0.8 if args.augment else 0.0, random_flip=args.augment,
             read_threads=args.read_threads, read_buffer_size=args.read_buffer)
  tok = load_tokenizer(None, max_length=args.max_length)
  start = time.perf_counter()
  it = pipeline.make_iterator(cfg, tok, batch_size_per_host=args.batch, seed=0,
                              process_index=0, process_count=1)
  for _ in range(args.warmup):
    next(it)
  first = time.perf_counter() - start
  start, cpu, main_cpu = time.perf_counter(), time.process_time(), time.thread_time()
  for _ in range(args.steps):
    batch = next(it)
  seconds = time.perf_counter() - start
  cpu, main_cpu = time.process_time() - cpu, time.thread_time() - main_cpu
  per_batch = lambda s: round(s / args.steps * 1e3, 2)  # ms
  print(json.dumps({
      "config": args.config, "image_size": args.image_size, "workers": args.workers,
      "read_threads": args.read_threads, "read_buffer": args.read_buffer,
      "batch": args.batch, "augment": args.augment, "steps": args.steps,
      "images_per_s": round(args.steps * args.batch / seconds, 1),
      "cpu_ms_per_batch": per_batch(cpu), "main_thread_cpu_ms_per_batch": per_batch(main_cpu),
      "startup_plus_warmup_s": round(first, 1), "cpu_count": os.cpu_count(),
      "load_avg_1m": round(os.getloadavg()[0], 2),
      "batch_shapes": {k: list(v.shape) for k, v in batch.items()}}))
  del batch
  pipeline.close_iterator(it)  # stops the workers; frees their buffered batches


if __name__ == "__main__":
  with cli.ends_on_signal("benchmarks/data_loader.py", "no rate was measured: rerun the command."):
    main()
