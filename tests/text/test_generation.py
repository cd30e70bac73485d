"""Sampling, bf16 compute, dropout and padding behaviour of the Flax T5."""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from llmimg_jax.text import (T5Config, T5EncoderModel, T5ForConditionalGeneration, generate,
                             init_params, load_pretrained, load_t5)
from llmimg_jax.text.generate import first_argmax, process_logits

# bf16 compute (fp32 params; fp32 norms, attention logits and softmax) vs fp32 on the tiny test
# model: relative RMS error <= 4% and max abs error <= 6% of the largest fp32 magnitude. bf16 keeps
# 8 mantissa bits (~0.4% per rounding); measured ~1.7-2.7% RMS, ~3.2% max on these sharp weights.
BF16_RMS_TOL, BF16_MAX_TOL = 0.04, 0.06


@pytest.fixture(scope="module")
def relu(relu_tied):
  return load_t5(relu_tied.path)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.3, 0, 0.8),
                                                     (1.0, 10, 0.5)])
def test_logit_processing_matches_transformers(temperature, top_k, top_p):
  logits = np.random.default_rng(0).normal(size=(4, 50)).astype(np.float32) * 3
  ref = torch.tensor(logits)
  warpers = [transformers.TemperatureLogitsWarper(temperature)]
  if top_k:
    warpers.append(transformers.TopKLogitsWarper(top_k))
  if top_p < 1:
    warpers.append(transformers.TopPLogitsWarper(top_p))
  for w in warpers:
    ref = w(None, ref)
  ref = ref.numpy()
  ours = np.asarray(process_logits(jnp.asarray(logits), temperature, top_k, top_p))
  np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref))
  np.testing.assert_allclose(ours[np.isfinite(ours)], ref[np.isfinite(ref)], rtol=1e-6)
  assert 0 < np.isfinite(ours).sum() < ours.size or (top_k == 0 and top_p == 1.0)


def test_first_argmax_is_jnp_argmax():
  """Greedy decoding's argmax (two plain reductions) returns jnp.argmax's index: the first of
  tied maxima, the first NaN, 0 for a row of -inf."""
  scores = np.random.default_rng(0).normal(size=(6, 50)).astype(np.float32)
  scores[1, [3, 7, 40]] = 9.0  # tie
  scores[2, [5, 9]] = np.nan
  scores[3] = -np.inf
  scores[4, [0, 49]] = np.inf
  scores[5, 2] = -np.inf
  np.testing.assert_array_equal(jax.jit(first_argmax)(scores), jnp.argmax(scores, axis=-1))
  assert list(np.asarray(first_argmax(scores))[1:4]) == [3, 5, 0]


def test_top_k_1_keeps_only_the_argmax():
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(3, 40)), jnp.float32)
  kept = np.isfinite(np.asarray(process_logits(logits, 0.5, 1, jnp.float32(0.9))))
  assert (kept.sum(1) == 1).all() and (kept.argmax(1) == np.asarray(logits).argmax(1)).all()


def test_sampling(relu, padded_batch):
  config, params = relu
  ids, mask = padded_batch["input_ids"], padded_batch["attention_mask"]
  kw = dict(max_new_tokens=24, do_sample=True, temperature=2.0)
  a = np.asarray(generate(params, config, ids, mask, rng=jax.random.PRNGKey(1), **kw))
  b = np.asarray(generate(params, config, ids, mask, rng=jax.random.PRNGKey(1), **kw))
  c = np.asarray(generate(params, config, ids, mask, rng=jax.random.PRNGKey(2), **kw))
  np.testing.assert_array_equal(a, b)  # same key, same samples
  assert (a != c).any()  # another key, other samples
  # transformers' default top_k=50; top_k=0 samples from the whole vocabulary.
  top_50 = generate(params, config, ids, mask, rng=jax.random.PRNGKey(1), top_k=50, **kw)
  whole = generate(params, config, ids, mask, rng=jax.random.PRNGKey(1), top_k=0, **kw)
  np.testing.assert_array_equal(a, np.asarray(top_50))
  assert (a != np.asarray(whole)).any()
  greedy = np.asarray(generate(params, config, ids, mask, max_new_tokens=24))
  assert (a != greedy).any()
  # A temperature near 0 concentrates sampling on the argmax: greedy again (same compiled program,
  # temperature is traced).
  cold = generate(params, config, ids, mask, rng=jax.random.PRNGKey(3), max_new_tokens=24,
                  do_sample=True, temperature=1e-4)
  np.testing.assert_array_equal(np.asarray(cold), greedy)
  # One key per row: a row's sample does not depend on the other rows.
  keys = jax.random.split(jax.random.PRNGKey(5), ids.shape[0])
  rows = np.asarray(generate(params, config, ids, mask, rng=keys, **kw))
  alone = np.asarray(generate(params, config, ids[1:2], mask[1:2], rng=keys[1:2], **kw))
  np.testing.assert_array_equal(rows[1], alone[0])
  assert (rows != a).any()
  with pytest.raises(ValueError,
                     match=r"one key per row \(3 rows\); got an array of shape \(2, 2\)"):
    generate(params, config, ids, mask, rng=keys[:2], **kw)
  with pytest.raises(ValueError, match="rng"):
    generate(params, config, ids, mask, max_new_tokens=4, do_sample=True)
  with pytest.raises(ValueError, match="top_p"):
    generate(params, config, ids, mask, max_new_tokens=4, do_sample=True, top_p=0.0,
             rng=jax.random.PRNGKey(0))


def test_top_p_samples_only_from_the_nucleus(relu, padded_batch):
  """generate(top_p=...): each sampled token is among the most likely tokens of its step whose
  probabilities (at the sampling temperature) sum to top_p; a tiny top_p leaves the argmax."""
  config, params = relu
  ids, mask = padded_batch["input_ids"], padded_batch["attention_mask"]
  n, temperature = 16, 3.0
  kw = dict(max_new_tokens=n, do_sample=True, temperature=temperature, top_k=0,
            rng=jax.random.PRNGKey(0))
  model = T5ForConditionalGeneration(config)
  forced = jax.jit(lambda dec: model.apply({"params": params}, ids, mask, dec))

  def outside_nucleus(tokens: np.ndarray, top_p: float) -> int:
    """Tokens (up to each row's EOS) with more than top_p of the probability on likelier ones."""
    start = np.full((len(tokens), 1), config.decoder_start_token_id, np.int32)
    logits = np.asarray(forced(np.concatenate([start, tokens[:, :-1]], 1)), np.float64)
    probs = np.asarray(jax.nn.softmax(logits / temperature, axis=-1))  # [b, n, vocab]
    count = 0
    for row, seq in enumerate(tokens):
      eos = np.flatnonzero(seq == config.eos_token_id)
      for t in range(eos[0] + 1 if len(eos) else n):
        p = probs[row, t]
        count += p[p > p[seq[t]]].sum() >= top_p + 1e-6
    return count

  greedy = np.asarray(generate(params, config, ids, mask, max_new_tokens=n))
  whole = np.asarray(generate(params, config, ids, mask, **kw))
  nucleus = np.asarray(generate(params, config, ids, mask, top_p=0.5, **kw))
  tiny = np.asarray(generate(params, config, ids, mask, top_p=1e-6, **kw))
  np.testing.assert_array_equal(tiny, greedy)  # a nucleus of one token
  assert outside_nucleus(nucleus, 0.5) == 0 < outside_nucleus(whole, 0.5)
  assert (nucleus != greedy).any() and (nucleus != whole).any()


def test_bf16_compute_close_to_fp32(checkpoint, padded_batch):  # tied and untied vocab heads
  config, params = load_t5(checkpoint.path)
  ids, mask = padded_batch["input_ids"], padded_batch["attention_mask"]
  dec = ids[:, :6]
  out = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    enc_model, model = T5EncoderModel(config, dtype), T5ForConditionalGeneration(config, dtype)
    enc, logits = jax.jit(lambda p: (
        enc_model.apply({"params": {k: p[k] for k in ("shared", "encoder")}}, ids, mask),
        model.apply({"params": p}, ids, mask, dec)))(params)
    assert enc.dtype == dtype and logits.dtype == jnp.float32
    out[dtype] = (np.asarray(enc, np.float32), np.asarray(logits))
  # The vocabulary projection runs in fp32: bf16 compute does not round the logits to bf16.
  bf16_logits = out[jnp.bfloat16][1]
  assert np.mean(bf16_logits != bf16_logits.astype(jnp.bfloat16).astype(np.float32)) > 0.9
  for ref, low in zip(out[jnp.float32], out[jnp.bfloat16]):
    assert np.isfinite(low).all()
    rms_err = np.linalg.norm(low - ref) / np.linalg.norm(ref)
    max_err = np.abs(low - ref).max() / np.abs(ref).max()
    assert 1e-4 < rms_err <= BF16_RMS_TOL and max_err <= BF16_MAX_TOL, (rms_err, max_err)
  # Params stay fp32 when the compute dtype is bf16.
  shapes = jax.eval_shape(T5EncoderModel(config, jnp.bfloat16).init, jax.random.PRNGKey(0), ids)
  assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  tokens = generate(params, config, ids, mask, max_new_tokens=4, dtype=jnp.bfloat16)
  assert tokens.shape == (ids.shape[0], 4) and tokens.dtype == jnp.int32


def test_attention_logits_of_bf16_queries_and_keys_are_fp32():
  """T5 does not scale its attention logits: at ~200, bf16 steps by 1 and would flatten logits that
  differ by ~0.1. attend's softmax, read out through v = identity and an identity output
  projection (fp32 module, so the weights are not rounded), against an fp32 einsum."""
  from llmimg_jax.text.modeling import T5Attention
  n = 5  # keys = d_kv = d_model
  config = T5Config(vocab_size=8, d_model=n, d_kv=n, d_ff=8, num_layers=1, num_heads=1)
  q = jnp.zeros((1, 1, 1, n)).at[..., :2].set(1.0).astype(jnp.bfloat16)  # [b, h, q, d_kv]
  k = jnp.zeros((1, 1, n, n)).at[..., 0].set(200.0).at[..., 1].set(0.1 * jnp.arange(n))
  k = k.astype(jnp.bfloat16)  # q . k_j = 200 + ~0.1 j
  v = jnp.eye(n)[None, None]
  weights = T5Attention(config).apply({"params": {"o": {"kernel": jnp.eye(n)}}}, q, k, v,
                                      jnp.zeros((1, 1, 1, n)), True, method="attend")
  ref = jax.nn.softmax(jnp.einsum("bhqd,bhkd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)))
  np.testing.assert_allclose(np.asarray(weights)[0, 0], np.asarray(ref)[0, 0, 0], atol=1e-5, rtol=0)
  assert np.ptp(np.asarray(ref)) > 0.05


def test_padding_does_not_leak(relu, padded_batch):
  """A row encodes the same alone as inside a batch padded to a longer length."""
  config, params = relu
  ids, mask = padded_batch["input_ids"], padded_batch["attention_mask"]
  apply = jax.jit(T5EncoderModel(config).apply)
  p = {"params": {k: params[k] for k in ("shared", "encoder")}}
  batch = np.asarray(apply(p, ids, mask))
  n = int(mask[2].sum())
  alone = np.asarray(apply(p, ids[2:3, :n], mask[2:3, :n]))
  np.testing.assert_allclose(batch[2, :n], alone[0], atol=1e-5)


def test_dropout_only_when_not_deterministic(relu, padded_batch):
  config, params = relu
  assert config.dropout_rate > 0
  ids, mask = padded_batch["input_ids"], padded_batch["attention_mask"]
  apply = jax.jit(T5EncoderModel(config).apply, static_argnames="deterministic")
  p = {"params": {k: params[k] for k in ("shared", "encoder")}}
  base = np.asarray(apply(p, ids, mask))  # deterministic by default
  np.testing.assert_array_equal(base, np.asarray(apply(p, ids, mask, deterministic=True)))
  d1 = apply(p, ids, mask, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
  d2 = apply(p, ids, mask, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)})
  assert not np.allclose(base, d1) and not np.allclose(d1, d2)


def test_offline_default(caplog):
  default = T5Config.byt5_small_scratch()
  assert default.vocab_size == 384 and default.is_gated and not default.tie_word_embeddings
  small = T5Config.byt5_small_scratch(d_model=32, num_layers=1, num_heads=2, d_kv=8)
  with caplog.at_level(logging.WARNING):
    config, params, tokenizer = load_pretrained(None, max_length=16, config=small)
  assert "UNTRAINED" in caplog.text
  assert config == small and config.vocab_size == tokenizer.vocab_size == 384
  assert set(params) == {"shared", "encoder", "decoder", "lm_head"}
  batch = tokenizer(["offline"])
  enc_params = {k: params[k] for k in ("shared", "encoder")}
  enc = jax.jit(T5EncoderModel(small).apply)({"params": enc_params}, batch["input_ids"],
                                             batch["attention_mask"])
  assert enc.shape == (1, 16, 32) and np.isfinite(np.asarray(enc)).all()
  enc_only = init_params(small, jax.random.PRNGKey(0), encoder_only=True)
  assert jax.tree.structure(enc_only) == jax.tree.structure(enc_params)


def test_embedding_gradient_in_bf16_is_summed_in_fp32():
  """The shared embedding's gradient adds up the gradients reaching every occurrence of a token
  (a frequent byte: hundreds in a training batch); with bf16 compute that scatter-add ran in
  bf16 (2.3% off here). Each row is now the fp32 sum of those bf16 gradients, up to their own
  rounding, which XLA may skip inside the model (0.2%)."""
  from llmimg_jax.text.modeling import padding_mask_bias
  config = T5Config.byt5_small_scratch(d_model=64, num_layers=1, num_heads=2, dropout_rate=0.0)
  ids = jax.random.randint(jax.random.key(0), (64, 32), 3, 10)  # 7 tokens, ~290 times each
  mask = jnp.ones_like(ids)
  model = T5EncoderModel(config, jnp.bfloat16)
  params = init_params(config, jax.random.key(1), encoder_only=True)
  table = params["shared"]["embedding"]  # [vocab, d_model]
  v = jax.random.normal(jax.random.key(2), (64, 32, 64)).astype(jnp.bfloat16)

  def loss(embedding):
    p = {**params, "shared": {"embedding": embedding}}
    return jnp.sum(model.apply({"params": p}, ids, mask).astype(jnp.float32) * v)

  def encoder_loss(x):  # the same loss from the looked-up embeddings x [batch, length, d_model]
    out = model.apply({"params": params}, x, padding_mask_bias(mask),
                      method=lambda m, x_, b: m.encoder(x_, b)[0])
    return jnp.sum(out.astype(jnp.float32) * v)

  got = np.asarray(jax.jit(jax.grad(loss))(table), np.float64)
  per_token = jax.jit(jax.grad(encoder_loss))(table[ids].astype(jnp.bfloat16))
  want = np.zeros(table.shape)
  np.add.at(want, np.asarray(ids), np.asarray(per_token, np.float64))
  assert np.linalg.norm(got - want) / np.linalg.norm(want) < 5e-3


def test_generation_under_jax_enable_x64_is_the_same(relu, padded_batch):
  """With jax_enable_x64 every search failed: "index arguments to dynamic_update_slice must be
  integers of the same type, got int64, int64, int32, int64" (a literal 0 is int64 there, the
  KV cache's index int32)."""
  config, params = relu
  ids, mask = padded_batch["input_ids"], padded_batch["attention_mask"]
  searches = [{}, {"num_beams": 3}, {"do_sample": True, "rng": jax.random.PRNGKey(1)}]
  run = lambda kw: np.asarray(generate(params, config, ids, mask, max_new_tokens=6, **kw))
  expected = [run(kw) for kw in searches]
  with jax.enable_x64(True):
    got = [run(kw) for kw in searches]
  for search, want, have in zip(searches, expected, got):
    np.testing.assert_array_equal(have, want, err_msg=str(search))
