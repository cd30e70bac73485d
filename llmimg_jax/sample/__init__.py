"""Sampling from trained runs: restore (any device count), batched jitted generation, expansion.

  from llmimg_jax.sample import CaptionExpander, Sampler
  sampler = Sampler.from_workdir("runs/quick", step=None)          # latest checkpoint
  images = sampler(["a red circle"], seed=0, num_per_prompt=4)     # uint8 [4, R, R, 3]
  sampler.expander = CaptionExpander.from_pretrained("google/flan-t5-small")
  result = sampler.sample(["a red circle"], seed=0)                # .images, .captions, ...
"""
from llmimg_jax.sample.expand import DEFAULT_TEMPLATE, CaptionExpander
from llmimg_jax.sample.outputs import GRID_NAME, JSONL_NAME, read_prompts, write_samples
from llmimg_jax.sample.restore import CheckpointError, available_steps, restore_for_sampling
from llmimg_jax.sample.sampler import SampleResult, Sampler

__all__ = [
    "DEFAULT_TEMPLATE", "GRID_NAME", "JSONL_NAME", "CaptionExpander", "CheckpointError",
    "SampleResult", "Sampler", "available_steps", "read_prompts", "restore_for_sampling",
    "write_samples",
]
