"""Sampling from trained runs: restore (any device count), batched jitted generation, expansion.

  from llmimg_jax.sample import CaptionExpander, Sampler
  sampler = Sampler.from_workdir("runs/quick", step=None)          # latest checkpoint
  images = sampler(["a red circle"], seed=0, num_per_prompt=4)     # uint8 [4, R, R, 3]
  sampler.expander = CaptionExpander.from_pretrained("google/flan-t5-small")
  result = sampler.sample(["a red circle"], seed=0)                # .images, .captions, ...

The names load on first use (PEP 562): importing a light submodule, e.g. sample.py's input checks
in llmimg_jax.sample.checks, does not import JAX, Orbax or Transformers.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  from llmimg_jax.sample.checks import DEFAULT_TEMPLATE, GRID_NAME, JSONL_NAME, read_prompts
  from llmimg_jax.sample.expand import CaptionExpander
  from llmimg_jax.sample.outputs import write_samples
  from llmimg_jax.sample.restore import CheckpointError, available_steps, restore_for_sampling
  from llmimg_jax.sample.sampler import SampleResult, Sampler

__all__ = [
    "DEFAULT_TEMPLATE", "GRID_NAME", "JSONL_NAME", "CaptionExpander", "CheckpointError",
    "SampleResult", "Sampler", "available_steps", "read_prompts", "restore_for_sampling",
    "write_samples",
]
_MODULES = {
    "DEFAULT_TEMPLATE": "checks", "GRID_NAME": "checks", "JSONL_NAME": "checks",
    "read_prompts": "checks", "CaptionExpander": "expand", "write_samples": "outputs",
    "CheckpointError": "restore", "available_steps": "restore", "restore_for_sampling": "restore",
    "SampleResult": "sampler", "Sampler": "sampler",
}


def __getattr__(name: str) -> Any:
  if name not in _MODULES:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
  globals()[name] = value  # later lookups skip this function
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *__all__})
