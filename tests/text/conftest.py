"""Tiny random PyTorch T5 checkpoints, saved by transformers and loaded by our loader.

Random T5s at the default init give flat logits (greedy repeats one token). Weights are drawn with
initializer_factor > 1 (sharper, input-dependent logits) but layer norms reset to 1, which keeps
activations small enough that fp32 rounding stays far below the 1e-4 parity tolerance (with
norm weights = factor, attention logits grow like factor**4 and PyTorch/XLA drift to ~1e-3). Seeds
are picked so greedy outputs vary.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from llmimg_jax.text import TextGenerator
from tests.text.utils import BYT5_VOCAB, MAX_LEN, _hf_kwargs, _random_t5, _save

TEXT_TESTS = os.path.dirname(os.path.abspath(__file__))


def pytest_configure(config):
  """When only tests/text runs: unoptimised XLA CPU codegen. Compiling the generation loops
  dominates this suite and O0 cuts compile time ~3x (HLO-level numerics are unchanged). The flag is
  process-wide, so it is left off when other suites (conv-heavy GAN code) share the session."""
  paths = [os.path.abspath(str(a).split("::")[0]) for a in config.args]
  only_text = paths and all(p == TEXT_TESTS or p.startswith(TEXT_TESTS + os.sep) for p in paths)
  if only_text and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_backend_optimization_level=0").strip()

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = ["a red fox jumps", "hello world, a longer sentence with more bytes in it", "x"]


@dataclasses.dataclass
class Checkpoint:
  path: str
  hf_model: "transformers.T5ForConditionalGeneration"  # reloaded by transformers from `path`
  name: str


@pytest.fixture(scope="session")
def relu_tied(tmp_path_factory) -> Checkpoint:
  """Original-T5 style: ReLU FFN, tied embeddings (decoder output rescaled), ByT5 tokenizer."""
  path = str(tmp_path_factory.mktemp("relu_tied"))
  _save(_random_t5(2, num_layers=2, feed_forward_proj="relu", initializer_factor=2.5), path)
  hf = transformers.T5ForConditionalGeneration.from_pretrained(path).eval()
  assert hf.config.scale_decoder_outputs
  return Checkpoint(path, hf, "relu_tied")


@pytest.fixture(scope="session")
def gated_untied(tmp_path_factory) -> Checkpoint:
  """v1.1/FLAN style: gated-GELU, separate lm_head (no rescale), 3 encoder / 2 decoder layers.

  transformers 5 always ties T5's lm_head when saving, so the untied head is written the way
  FLAN-T5 checkpoints store it: its own `lm_head.weight` and tie_word_embeddings=false.
  """
  from safetensors.torch import load_file, save_file
  path = str(tmp_path_factory.mktemp("gated_untied"))
  _save(_random_t5(3, num_layers=3, num_decoder_layers=2, feed_forward_proj="gated-gelu"), path)
  weights = os.path.join(path, "model.safetensors")
  state = load_file(weights)
  assert "lm_head.weight" not in state
  state["lm_head.weight"] = torch.randn(BYT5_VOCAB, 32) * 0.3
  save_file(state, weights, metadata={"format": "pt"})
  cfg_path = os.path.join(path, "config.json")
  with open(cfg_path) as f:
    cfg = json.load(f)
  cfg["tie_word_embeddings"] = False
  cfg.pop("scale_decoder_outputs", None)
  with open(cfg_path, "w") as f:
    json.dump(cfg, f)
  hf = transformers.T5ForConditionalGeneration.from_pretrained(path).eval()
  assert not hf.config.scale_decoder_outputs
  assert not torch.equal(hf.lm_head.weight, hf.shared.weight)
  return Checkpoint(path, hf, "gated_untied")


@pytest.fixture(scope="session")
def mt5_untied(tmp_path_factory) -> Checkpoint:
  """mT5 as transformers 5 saves it: tie_word_embeddings=true and no scale_decoder_outputs in
  config.json, its own lm_head.weight, and decoder outputs never rescaled (MT5's forward)."""
  path = str(tmp_path_factory.mktemp("mt5_untied"))
  config = transformers.MT5Config(**_hf_kwargs(num_layers=2))
  torch.manual_seed(4)
  model = transformers.MT5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.fill_(1.0)
  model.lm_head.weight = torch.nn.Parameter(torch.randn(BYT5_VOCAB, 32) * 0.5)
  _save(model, path)
  with open(os.path.join(path, "config.json")) as f:
    saved = json.load(f)
  assert saved["model_type"] == "mt5" and saved["tie_word_embeddings"]
  assert "scale_decoder_outputs" not in saved
  hf = transformers.MT5ForConditionalGeneration.from_pretrained(path).eval()
  assert not torch.equal(hf.lm_head.weight, hf.shared.weight)
  return Checkpoint(path, hf, "mt5_untied")


@pytest.fixture(scope="session", params=["relu_tied", "gated_untied"])
def checkpoint(request) -> Checkpoint:
  return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def generator(relu_tied):
  """relu_tied's TextGenerator at MAX_LEN tokens (tests/text/test_generate_api.py has its own)."""
  return TextGenerator.from_pretrained(relu_tied.path, max_length=MAX_LEN)


@pytest.fixture(scope="session")
def padded_batch() -> dict[str, np.ndarray]:
  """TEXTS as ByT5 ids, right-padded to different lengths (attention_mask has zeros)."""
  tok = transformers.ByT5Tokenizer()
  b = tok(TEXTS, padding=True, return_tensors="np")
  mask = b["attention_mask"].astype(np.int32)
  assert mask.min() == 0 and len(set(mask.sum(1))) == len(TEXTS)
  return {"input_ids": b["input_ids"].astype(np.int32), "attention_mask": mask}
