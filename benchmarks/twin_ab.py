"""The PyTorch twin's step with fused Adam (as run.py times it) vs torch's default Adam.

  python benchmarks/twin_ab.py --bench 32 [--rounds 20]

Both twins start from the same weights and take the same batch (run.py's GAN step config at
--bench px, float32, CPU); their steps alternate in one process, then the three optimizer steps
alone (the last step's gradients, stepped again). The default twin keeps G's weights contiguous,
as the twin did before fused Adam (which needs them channels_last: torch_train.build).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import gan_bench, timing, torch_train  # noqa: E402
from benchmarks.profile_step import parse_args_reusing_host_memory  # noqa: E402
from llmimg_jax import cli  # noqa: E402
from llmimg_jax.gan.common import SUPPORTED_RESOLUTIONS  # noqa: E402
from llmimg_jax.train.state import build_models, build_text, init_state  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--bench", type=int, default=32, choices=SUPPORTED_RESOLUTIONS,
                      metavar="RES")
  parser.add_argument("--rounds", type=cli.at_least(1), default=20)
  parser.add_argument("--warmup", type=cli.at_least(0), default=3)
  args = parse_args_reusing_host_memory(parser)
  cfg = gan_bench.make_config(args.bench, 32, 32, "float32")
  t5_config = build_text(cfg)[1]
  models = build_models(cfg, t5_config)
  state = jax.jit(functools.partial(init_state, models))(jax.random.PRNGKey(cfg.seed), None)
  cpu = torch.device("cpu")
  twins = {"fused Adam": gan_bench._torch_twin(cfg, models, state, cpu, None),
           "default Adam": gan_bench._torch_twin(cfg, models, state, cpu, None, fused_adam=False)}
  batch = gan_bench.torch_batch(gan_bench._batch(cfg, t5_config.vocab_size), cpu)

  def optimizers(m: torch_train.TorchGAN) -> None:
    for opt in (m.g_opt, m.d_opt, m.text_opt):
      opt.step()

  for what, call in (("train step", lambda m: torch_train.train_step(m, batch)),
                     ("optimizer steps alone", optimizers)):
    times = timing.alternate({name: functools.partial(call, m) for name, m in twins.items()},
                             args.warmup, args.rounds)
    for name, t in times.items():
      print(f"{args.bench}px {what:22s} {name:13s} median {t['median_s'] * 1e3:8.1f} ms, "
            f"min {t['min_s'] * 1e3:8.1f} ms ({t['n']} calls)")


if __name__ == "__main__":
  with cli.ends_on_signal("benchmarks/twin_ab.py",
                          "the variants were not all timed: rerun the command."):
    main()
