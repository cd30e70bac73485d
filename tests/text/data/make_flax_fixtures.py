"""Writes the Flax T5 checkpoints in this folder with transformers 4.x, and their outputs.

transformers 5 has no Flax models, so what its 4.x Flax T5s saved (flax_model.msgpack, or shards and
flax_model.msgpack.index.json, or model.safetensors of Flax names) is kept here, tiny and random,
with the outputs transformers' own Flax T5 gave for fixed inputs (reference.npz);
tests/text/test_flax_checkpoints.py loads them with llmimg_jax's loader and compares. Regenerate in
a scratch venv, not the project's:

  python3 -m venv /tmp/flax-t5-venv
  /tmp/flax-t5-venv/bin/pip install "transformers==4.46.3" "flax==0.8.5" "jax[cpu]==0.4.30" \
      "jaxlib==0.4.30" "numpy<2.1"
  /tmp/flax-t5-venv/bin/python tests/text/data/make_flax_fixtures.py

Folders written (each: config.json, generation_config.json where the class writes one, weights):
  flax_t5_relu_tied/        original-T5 style: ReLU FFN, tied embeddings (decoder output rescaled)
  flax_t5_gated_untied/     v1.1 / FLAN style: gated-GELU, own lm_head, 1 encoder / 2 decoder layers
  flax_t5_gated_sharded/    the same model saved with max_shard_size (shards + their index)
  flax_t5_gated_safetensors/  the same model saved with safe_serialization=True: model.safetensors
                            of '.'-joined Flax names and layout, metadata {"format": "flax"}
  flax_t5_encoder/          FlaxT5EncoderModel (shared embedding + encoder only)
reference.npz in each but the sharded and the safetensors one (flax_t5_gated_untied's model):
input_ids, attention_mask (the second row padded), decoder_input_ids, encoder_last_hidden_state
and, for the encoder-decoders, logits.
"""
from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import transformers
from flax import traverse_util
from transformers import FlaxT5EncoderModel, FlaxT5ForConditionalGeneration, T5Config

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = 32


def _config(**kw) -> T5Config:
  base = dict(vocab_size=VOCAB, d_model=8, d_kv=4, num_heads=2, d_ff=16,
              relative_attention_num_buckets=8, relative_attention_max_distance=16,
              dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
  return T5Config(**{**base, **kw})


def _randomized(params, seed: int):
  """Layer norms away from their init of ones (so a norm loaded into the wrong place shows), every
  weight drawn anew at a scale that keeps the logits input-dependent but small."""
  flat = traverse_util.flatten_dict(params)
  rng = np.random.default_rng(seed)
  out = {}
  for path, value in sorted(flat.items()):
    shape = np.shape(value)
    if path[-2].endswith("layer_norm"):
      new = 1.0 + 0.2 * rng.standard_normal(shape)
    else:
      new = rng.standard_normal(shape) * (0.5 if path[-1] == "embedding" else shape[0] ** -0.5)
    out[path] = np.asarray(new, np.float32)
  return traverse_util.unflatten_dict(out)


def _inputs(seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, VOCAB, size=(2, 6)).astype(np.int32)
  mask = np.ones_like(ids)
  ids[1, 4:], mask[1, 4:] = 0, 0  # right padding, as a tokenizer pads a shorter text
  dec = rng.integers(2, VOCAB, size=(2, 5)).astype(np.int32)
  dec[:, 0] = 0  # decoder_start_token_id
  return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec}


def _fresh(name: str) -> str:
  path = os.path.join(HERE, name)
  shutil.rmtree(path, ignore_errors=True)
  return path


def encoder_decoder(name: str, config: T5Config, seed: int, sharded_name: str | None = None,
                    safetensors_name: str | None = None):
  model = FlaxT5ForConditionalGeneration(config, seed=seed)
  params = _randomized(model.params, seed)
  assert ("lm_head" in params) != config.tie_word_embeddings
  batch = _inputs(seed)
  out = model(**batch, params=params)
  model.save_pretrained(_fresh(name), params=params)
  np.savez(os.path.join(HERE, name, "reference.npz"), **batch,
           encoder_last_hidden_state=np.asarray(out.encoder_last_hidden_state),
           logits=np.asarray(out.logits))
  if sharded_name:
    path = _fresh(sharded_name)
    model.save_pretrained(path, params=params, max_shard_size="4KB")
    assert "flax_model.msgpack.index.json" in os.listdir(path), os.listdir(path)
  if safetensors_name:
    path = _fresh(safetensors_name)
    model.save_pretrained(path, params=params, safe_serialization=True)
    assert "model.safetensors" in os.listdir(path), os.listdir(path)


def encoder_only(name: str, config: T5Config, seed: int):
  model = FlaxT5EncoderModel(config, seed=seed)
  params = _randomized(model.params, seed)
  assert set(params) == {"shared", "encoder"}
  batch = _inputs(seed)
  del batch["decoder_input_ids"]
  out = model(**batch, params=params)
  model.save_pretrained(_fresh(name), params=params)
  np.savez(os.path.join(HERE, name, "reference.npz"), **batch,
           encoder_last_hidden_state=np.asarray(out.last_hidden_state))


def main():
  print(f"transformers {transformers.__version__}, jax {jax.__version__}")
  encoder_decoder("flax_t5_relu_tied", _config(num_layers=2, feed_forward_proj="relu"), seed=1)
  encoder_decoder("flax_t5_gated_untied",
                  _config(num_layers=1, num_decoder_layers=2, feed_forward_proj="gated-gelu",
                          tie_word_embeddings=False), seed=2, sharded_name="flax_t5_gated_sharded",
                  safetensors_name="flax_t5_gated_safetensors")
  encoder_only("flax_t5_encoder", _config(num_layers=2, feed_forward_proj="gated-gelu",
                                          tie_word_embeddings=False), seed=3)


if __name__ == "__main__":
  main()
