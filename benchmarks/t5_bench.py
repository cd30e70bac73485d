"""T5 encoder forward and greedy KV-cache generation: llmimg_jax.text vs transformers (PyTorch).

Both sides run the same t5-small-shaped random weights: transformers initialises them, saves them
with save_pretrained, and our loader reads that directory. Generation is forced to exactly
`new_tokens` tokens on both sides (min_new_tokens = max_new_tokens), so random weights that emit
EOS early cannot make one side do less work.
"""
from __future__ import annotations

import functools
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from benchmarks import timing
from llmimg_jax.text import T5EncoderModel, generate, load_t5

T5_SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                feed_forward_proj="relu", tie_word_embeddings=True, dropout_rate=0.0,
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def inputs(batch: int, length: int, vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded ids and mask [batch, length]: length/2..length tokens (row 0 all), EOS last."""
  rs = np.random.RandomState(seed)
  lengths = rs.randint(length // 2, length + 1, size=batch)
  lengths[0] = length
  mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)  # [b, L]
  ids = np.where(mask > 0, rs.randint(2, vocab, size=(batch, length)), 0).astype(np.int32)
  ids[np.arange(batch), lengths - 1] = 1  # EOS
  return ids, mask


def bench_t5(dtype: str, device: torch.device, batch: int, length: int, new_tokens: int,
             warmup: int, iters: int) -> list[dict[str, Any]]:
  torch.manual_seed(0)
  hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**T5_SMALL)).eval()
  with tempfile.TemporaryDirectory() as tmp:
    hf.save_pretrained(tmp)
    config, params = load_t5(tmp)
  hf = hf.to(device)
  jdt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
  autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bfloat16"
              else torch.autocast(device.type, enabled=False))
  n_jax = sum(x.size for x in jax.tree.leaves(params))
  n_torch = sum(p.numel() for p in hf.parameters())
  if n_jax != n_torch:
    raise AssertionError(f"T5 parameter counts differ: JAX {n_jax} vs PyTorch {n_torch}.")

  ids, mask = inputs(batch, length, config.vocab_size)
  j_ids, j_mask = jnp.asarray(ids), jnp.asarray(mask)
  t_ids, t_mask = torch.from_numpy(ids).long().to(device), torch.from_numpy(mask).long().to(device)
  enc_params = {k: params[k] for k in ("shared", "encoder")}
  encoder = T5EncoderModel(config, jdt)
  enc_fn = jax.jit(lambda p, i, m: encoder.apply({"params": p}, i, m))
  enc_compiled = enc_fn.lower(enc_params, j_ids, j_mask).compile()

  @torch.inference_mode()
  def torch_encode():
    with autocast:
      out = hf.encoder(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
    timing.torch_sync(device)
    return out

  def jax_encode():
    return enc_compiled(enc_params, j_ids, j_mask).block_until_ready()

  enc_diff = float(np.max(np.abs(np.asarray(jax_encode(), np.float32)
                                 - torch_encode().float().cpu().numpy())))
  t_enc = timing.alternate({"jax": jax_encode, "torch": torch_encode}, warmup, iters)

  gen = functools.partial(generate, params, config, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, dtype=jdt)

  @torch.inference_mode()
  def torch_generate():
    with autocast:
      out = hf.generate(input_ids=t_ids, attention_mask=t_mask, max_new_tokens=new_tokens,
                        min_new_tokens=new_tokens, do_sample=False, num_beams=1)
    timing.torch_sync(device)
    return out[:, 1:]  # drop the decoder start token

  def jax_generate():
    return gen(j_ids, j_mask).block_until_ready()

  agree = float(np.mean(np.asarray(jax_generate()) == torch_generate().cpu().numpy()))
  t_gen = timing.alternate({"jax": jax_generate, "torch": torch_generate}, warmup, iters)
  shape = f"t5-small b{batch} L{length}"
  return [
      dict(name=f"T5 encoder fwd ({shape})", jax=t_enc["jax"], torch=t_enc["torch"],
           flops=timing.xla_flops(enc_compiled, enc_fn, enc_params, j_ids, j_mask), params=n_jax,
           items=batch, unit="seq",
           check={"max_abs_diff_encoder_states": enc_diff}),
      dict(name=f"T5 greedy gen ({shape}, {new_tokens} new)", jax=t_gen["jax"],
           torch=t_gen["torch"], flops=None, params=n_jax, items=batch, unit="seq",
           check={"token_agreement": agree}),
  ]
