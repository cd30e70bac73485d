"""Jitted T5 generation with a preallocated KV cache: greedy, sampling and beam search.

Beam search follows transformers' vectorised beam search with its default `early_stopping=False`
(keep 2 * num_beams candidates per step, finish hypotheses whose scores are length-normalised by
`generated_len ** length_penalty`, stop when no running beam can beat the worst finished one).
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmimg_jax import cli, prng
from llmimg_jax.text.config import T5Config, compute_dtype
from llmimg_jax.text.modeling import T5ForConditionalGeneration

log = logging.getLogger(__name__)
NEG = -1.0e9  # transformers' "impossible" score offset


def generate(params: dict, config: T5Config, input_ids: np.ndarray | jax.Array,
             attention_mask: np.ndarray | jax.Array | None = None, *, max_new_tokens: int,
             num_beams: int = 1, do_sample: bool = False, temperature: float = 1.0, top_k: int = 50,
             top_p: float = 1.0, length_penalty: float = 1.0, min_new_tokens: int = 0,
             rng: jax.Array | None = None, dtype: Any = jnp.float32) -> jax.Array:
  """Generated ids, int32 [batch, max_new_tokens]: no decoder start token, EOS kept, pad after it.

  params: T5ForConditionalGeneration params (the inner dict, without {'params': ...}).
  input_ids, attention_mask: int [batch, length] (right-padded batches are fine); the mask 0/1.
  rng (sampling): one key, split over the rows, or one key per row ([batch] keys), so that a row's
  sample does not depend on the other rows (under the rbg PRNGs too).
  Sampling options default to transformers' GenerationConfig (top_k=50; top_k=0 turns it off).
  """
  if config.num_decoder_layers < 1 or "decoder" not in params:
    raise ValueError("This T5 holds an encoder only (no decoder layers in its config, or params "
                     "loaded with encoder_only=True or from a T5EncoderModel checkpoint): it "
                     "encodes but cannot generate. Load a T5ForConditionalGeneration checkpoint "
                     "to generate.")
  options = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "min_new_tokens":
             min_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
             "length_penalty": length_penalty}
  if unset := [f"{k}=None" for k, v in options.items() if v is None]:  # was a TypeError of '<'
    raise TypeError(f"{', '.join(unset)}: pass a number (min_new_tokens=0 for no minimum, "
                    "top_k=0 for no top-k filter).")
  input_ids = np.asarray(input_ids)
  if input_ids.ndim != 2 or input_ids.shape[1] == 0:
    raise ValueError(f"input_ids must be [batch, length] with length >= 1, got shape "
                     f"{input_ids.shape}.")
  if jnp.issubdtype(input_ids.dtype, jnp.floating) and (  # bf16 too (no np.floating)
      cut := input_ids[input_ids != np.round(input_ids)]).size:  # NaN too; jnp.int32 cuts them
    raise ValueError(f"input_ids must be whole numbers (token ids); got {input_ids.dtype} values "
                     f"such as {cut[0]}. Pass the tokenizer's int ids (its 'input_ids').")
  if input_ids.size and not 0 <= input_ids.min() <= input_ids.max() < config.vocab_size:
    raise ValueError(f"input_ids must lie in [0, vocab_size={config.vocab_size}); got "
                     f"{input_ids.min()}..{input_ids.max()} (ids of another tokenizer?).")
  input_ids = jnp.asarray(input_ids, jnp.int32)
  attention_mask = (np.ones(input_ids.shape, np.int32) if attention_mask is None
                    else np.asarray(attention_mask))
  if attention_mask.shape != input_ids.shape:
    raise ValueError(f"attention_mask {attention_mask.shape} must match input_ids "
                     f"{input_ids.shape}.")
  # NaN too; jnp.int32 would cut 0.5 to 0 (masked), where the encoder reads nonzero as a token
  if (cut := attention_mask[(attention_mask != 0) & (attention_mask != 1)]).size:
    raise ValueError(f"attention_mask must hold 0 (padding) or 1 (a token); got "
                     f"{attention_mask.dtype} values such as {cut[0]}. Pass the tokenizer's "
                     "'attention_mask'.")
  attention_mask = jnp.asarray(attention_mask, jnp.int32)
  if max_new_tokens < 1 or num_beams < 1:
    raise ValueError(f"Need max_new_tokens >= 1 and num_beams >= 1, got {max_new_tokens}, "
                     f"{num_beams}.")
  if max_new_tokens >= 2**31:  # jit's OverflowError traceback
    raise ValueError(f"max_new_tokens={max_new_tokens} must be < 2**31 (an int32 step count).")
  # int() would truncate them (max_new_tokens=2.5 to 2 tokens, num_beams=2.5 to 2 beams)
  if fractional := [f"{k}={options[k]}" for k in ("max_new_tokens", "num_beams", "min_new_tokens")
                    if options[k] % 1 != 0]:
    raise ValueError(f"{', '.join(fractional)}: pass whole numbers (ints).")
  # NaN too; a fractional top_k is refused (as transformers does), not truncated by int()
  if do_sample and (not cli.temperature_ok(temperature) or not 0 < top_p <= 1 or top_k < 0
                    or top_k % 1 != 0):
    raise ValueError(f"Sampling needs temperature {cli.TEMPERATURES} (lower is greedy "
                     "decoding: do_sample=False), 0 < top_p <= 1, top_k >= 0 a whole number; got "
                     f"temperature={temperature}, top_p={top_p}, top_k={top_k}.")
  # Beam scores are divided by length ** length_penalty: outside float32's range (NaN, inf, or
  # e.g. 49 ** -30), every score is NaN or -inf, and rows of pad tokens are returned.
  if num_beams > 1 and not abs(length_penalty) * math.log(max_new_tokens + 1) < 87:
    raise ValueError(f"length_penalty={length_penalty} with max_new_tokens={max_new_tokens}: "
                     "(max_new_tokens + 1) ** length_penalty leaves float32's range; keep "
                     "|length_penalty| * ln(max_new_tokens + 1) below 87 (1.0: none; > 0 favours "
                     "longer sequences).")
  if do_sample and num_beams > 1:
    raise NotImplementedError("Beam sampling (do_sample with num_beams > 1) is not supported.")
  if rng is None and do_sample:
    raise ValueError("do_sample=True needs rng=jax.random.PRNGKey(seed).")
  if do_sample:
    rng = _row_keys(jnp.asarray(rng), input_ids.shape[0])
    # rbg, unsafe_rbg: one row too, for the same draw as in any batch
    draw_rows_apart = prng.vmap_draws_from_first_key(rng)
  else:  # greedy and beam search draw nothing: one unused key, whatever the form of `rng`
    rng = jax.random.PRNGKey(0)
    # As transformers does, say so; and one compiled program whatever their values.
    if ignored := [f"{k}={v}" for k, v, default in (
        ("temperature", temperature, 1.0), ("top_k", top_k, 50), ("top_p", top_p, 1.0))
        if v != default]:
      log.warning("%s only apply when sampling (do_sample=True); ignored.", ", ".join(ignored))
    top_k, top_p, draw_rows_apart = 0, 1.0, False
  if num_beams == 1 and length_penalty != 1.0:
    log.warning("length_penalty=%s only applies to beam search (num_beams > 1); ignored.",
                length_penalty)
  if min_new_tokens > max_new_tokens:  # transformers warns of such "unfeasible" constraints
    log.warning("min_new_tokens=%s is more than max_new_tokens=%s: EOS is held back at every "
                "step, so every row runs to max_new_tokens without one. Lower min_new_tokens or "
                "raise max_new_tokens.", min_new_tokens, max_new_tokens)
  # Scalars that only enter arithmetic are traced (no recompiles); the rest shape the program.
  scalars = jnp.asarray([temperature, top_p, length_penalty], jnp.float32)
  min_tokens = jnp.asarray(min(max(int(min_new_tokens), 0), int(max_new_tokens)), jnp.int32)
  return _generate(params, input_ids, attention_mask, rng, scalars, min_tokens, config=config,
                   max_new_tokens=int(max_new_tokens), num_beams=int(num_beams),
                   do_sample=bool(do_sample), top_k=int(top_k), use_top_p=bool(top_p < 1.0),
                   draw_rows_apart=draw_rows_apart, dtype=compute_dtype(dtype))


@functools.partial(jax.jit, static_argnames=(
    "config", "max_new_tokens", "num_beams", "do_sample", "top_k", "use_top_p", "draw_rows_apart",
    "dtype"))
def _generate(params, input_ids, attention_mask, rng, scalars, min_new_tokens, *, config,
              max_new_tokens, num_beams, do_sample, top_k, use_top_p, draw_rows_apart, dtype):
  temperature, top_p, length_penalty = scalars[0], scalars[1], scalars[2]
  model = T5ForConditionalGeneration(config, dtype)
  variables = {"params": params}
  enc = model.apply(variables, input_ids, attention_mask, method=model.encode)  # [b, l, d]
  if num_beams > 1:  # every beam of an example sees the same encoder states
    enc = jnp.repeat(enc, num_beams, axis=0)
    attention_mask = jnp.repeat(attention_mask, num_beams, axis=0)
  cache = model.apply(variables, enc, max_new_tokens, method=model.init_cache)

  def step_logits(tokens, cache, step):  # tokens [rows] -> fp32 scores [rows, vocab]
    logits, cache = model.apply(variables, tokens[:, None], enc, attention_mask, cache=cache,
                                method=model.decode)
    scores = logits[:, 0]
    if num_beams > 1:  # log-probs, before the processors as in transformers' beam search
      scores = jax.nn.log_softmax(scores, axis=-1)
    # transformers' MinNewTokensLengthLogitsProcessor (min_new_tokens is traced: no recompiles)
    eos_col = jnp.arange(scores.shape[-1]) == config.eos_token_id
    scores = jnp.where(eos_col & (step < min_new_tokens), -jnp.inf, scores)
    return scores, cache

  if num_beams == 1:
    out = _greedy_or_sample(step_logits, cache, input_ids.shape[0], rng, config, max_new_tokens,
                            do_sample, temperature, top_k, top_p if use_top_p else None,
                            draw_rows_apart)
  else:
    out = _beam_search(step_logits, cache, input_ids.shape[0], config, max_new_tokens, num_beams,
                       length_penalty)
  return _pad_after_eos(out, config)


def _row_keys(rng: jax.Array, batch: int) -> jax.Array:
  """One key (raw uint32 [2], [4] under the rbg PRNGs, or typed []) -> `batch` keys; `batch` keys
  pass through."""
  key_ndim = 0 if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) else 1
  if key_ndim and rng.dtype != jnp.uint32:  # rng=0 or per-row seeds: ints, not keys
    raise TypeError(f"rng must be a JAX PRNG key (jax.random.PRNGKey(seed), jax.random.key(seed))"
                    f" or one per row; got {rng.dtype} {list(rng.shape)} (int seeds? "
                    "TextGenerator.generate takes those).")
  impl = jax.config.jax_default_prng_impl
  # Raw key data name no PRNG: its length must be the default's.
  if key_ndim and rng.ndim and rng.shape[-1] != (n := prng.raw_key_length(impl)):
    raise TypeError(f"rng must be raw key data ending in {n} (jax.random.PRNGKey(seed)'s under "
                    f"jax_default_prng_impl={impl}), one key or one per row; got uint32 "
                    f"{list(rng.shape)} (a key made under another default?). Typed keys "
                    "(jax.random.key(seed, impl=...)) carry their implementation.")
  if rng.ndim == key_ndim:
    return jax.random.split(rng, batch)
  if rng.ndim != key_ndim + 1 or rng.shape[0] != batch:
    raise ValueError(f"rng must be one key or one key per row ({batch} rows); got an array of "
                     f"shape {rng.shape}.")
  return rng


def _pad_after_eos(tokens, config):
  """Replaces everything after the first EOS by pad; [b, n] int32."""
  is_eos = tokens == config.eos_token_id
  after = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0
  return jnp.where(after, config.pad_token_id, tokens).astype(jnp.int32)


def process_logits(logits: jax.Array, temperature: float | jax.Array, top_k: int,
                   top_p: float | jax.Array | None = None) -> jax.Array:
  """Temperature, then top-k, then top-p (nucleus; None or 1.0 = off), in transformers' order.

  top_k is static; temperature and top_p may be traced scalars."""
  logits = logits / temperature
  if 0 < top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p is not None and not (isinstance(top_p, (int, float)) and top_p >= 1.0):
    sorted_logits = jnp.sort(logits, axis=-1)  # ascending, as transformers' TopPLogitsWarper
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove = (cum <= 1.0 - top_p).at[..., -1].set(False)  # always keep the most likely token
    threshold = jnp.min(jnp.where(remove, jnp.inf, sorted_logits), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def first_argmax(scores: jax.Array) -> jax.Array:
  """jnp.argmax over the last axis (the first maximum; the first NaN if any) as a max and a min.

  XLA:CPU runs argmax's (value, index) reduction as a scalar loop: 0.6 ms for [8, 32128] here,
  0.2 ms for these two vectorised reductions, once per generated token.
  """
  best = jnp.max(scores, axis=-1, keepdims=True)
  hit = (scores == best) | jnp.isnan(scores)
  vocab = scores.shape[-1]
  return jnp.min(jnp.where(hit, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)


def _draw(keys: jax.Array, logits: jax.Array, rows_apart: bool) -> jax.Array:
  """One categorical draw per row, row i with keys[i]: keys [b] (typed) or [b, key], logits
  [b, vocab] -> int [b].

  rows_apart: for the rbg PRNGs, under whose vmap every row would be drawn from keys[0]
  (rng_bit_generator's batching rule): each row's Gumbel noise comes from its own key in a scan
  unrolled 8 rows at a time (jax.lax.map over whole categorical draws doubled the draw's time on
  CPU; a full unroll compiled 2.5 s longer for 128 rows), then one batched argmax, as
  jax.random.categorical draws: argmax(logits + gumbel).
  """
  if not rows_apart:
    return jax.vmap(jax.random.categorical)(keys, logits)
  draw = lambda _, key: (None, jax.random.gumbel(key, logits.shape[-1:], logits.dtype))
  gumbel = jax.lax.scan(draw, None, keys, unroll=max(1, min(8, len(keys))))[1]  # [b, vocab]
  return jnp.argmax(logits + gumbel, axis=-1)


def _greedy_or_sample(step_logits, cache, batch, rng, config, n, do_sample, temperature, top_k,
                      top_p, draw_rows_apart=False):
  pad, eos = config.pad_token_id, config.eos_token_id

  def cond(state):
    step, _, _, _, finished = state
    return (step < n) & ~jnp.all(finished)

  def body(state):
    step, cache, last, out, finished = state
    logits, cache = step_logits(last, cache, step)  # [b, vocab]
    if do_sample:  # row i draws with fold_in(rng[i], step): independent of the other rows
      keys = jax.vmap(jax.random.fold_in, (0, None))(rng, step)
      token = _draw(keys, process_logits(logits, temperature, top_k, top_p), draw_rows_apart)
    else:
      token = first_argmax(logits)
    token = jnp.where(finished, pad, token).astype(jnp.int32)
    out = jax.lax.dynamic_update_slice_in_dim(out, token[:, None], step, 1)
    return step + 1, cache, token, out, finished | (token == eos)

  start = jnp.full((batch,), config.decoder_start_token_id, jnp.int32)
  out = jnp.full((batch, n), pad, jnp.int32)
  state = (jnp.zeros((), jnp.int32), cache, start, out, jnp.zeros((batch,), bool))
  return jax.lax.while_loop(cond, body, state)[3]


def _gather(x, idx):
  """x [b, k, ...], idx [b, j] -> [b, j, ...]."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _beam_search(step_logits, cache, batch, config, n, num_beams, length_penalty):
  k, pad, eos = num_beams, config.pad_token_id, config.eos_token_id
  k2 = 2 * k  # candidates kept per step: (1 + number of EOS ids) * num_beams
  top_num_beam_mask = jnp.arange(k2) < k

  def cond(state):
    return (state["step"] < n) & ~state["done"]

  def body(s):
    step = s["step"]
    log_probs, cache = step_logits(s["last"], s["cache"], step)  # [b*k, V]
    vocab = log_probs.shape[-1]
    scores = log_probs.reshape(batch, k, vocab) + s["run_scores"][:, :, None]  # [b, k, V]
    topk_lp, topk_idx = jax.lax.top_k(scores.reshape(batch, k * vocab), k2)  # [b, 2k]
    parent, token = topk_idx // vocab, (topk_idx % vocab).astype(jnp.int32)  # beam, id [b, 2k]
    cand_seqs = _gather(s["run_seqs"], parent)  # [b, 2k, n]
    cand_seqs = jax.vmap(jax.vmap(lambda row, t: row.at[step].set(t)))(cand_seqs, token)
    hits = (token == eos) | (step + 1 >= n)  # [b, 2k]

    # Running beams for the next step: best k candidates that did not just finish.
    run_lp = topk_lp + hits.astype(jnp.float32) * NEG  # [b, 2k]
    next_idx = jax.lax.top_k(run_lp, k)[1]  # [b, k]
    run_seqs = _gather(cand_seqs, next_idx)  # [b, k, n]
    run_scores = _gather(run_lp, next_idx)  # [b, k]
    run_parent, last = _gather(parent, next_idx), _gather(token, next_idx).reshape(-1)

    # Finished hypotheses: merge the newly finished (top k candidates only) with the kept ones.
    just_finished = hits & top_num_beam_mask[None, :]
    fin_lp = topk_lp / ((step + 1).astype(jnp.float32) ** length_penalty)  # [b, 2k]
    fin_lp = fin_lp + (~s["improvable"])[:, None].astype(jnp.float32) * NEG
    fin_lp = fin_lp + (~just_finished).astype(jnp.float32) * NEG
    merged_scores = jnp.concatenate([s["fin_scores"], fin_lp], axis=1)  # [b, k + 2k]
    keep = jax.lax.top_k(merged_scores, k)[1]  # [b, k]
    fin_seqs = _gather(jnp.concatenate([s["fin_seqs"], cand_seqs], axis=1), keep)  # [b, k, n]
    fin_scores = _gather(merged_scores, keep)
    is_fin = _gather(jnp.concatenate([s["is_fin"], just_finished], axis=1), keep)

    # Reorder the self-attention cache to the surviving beams' parents.
    rows = (jnp.arange(batch)[:, None] * k + run_parent).reshape(-1)  # [b*k]
    cache = {name: (v if name == "index" else
                    {**v, "self_k": v["self_k"][rows], "self_v": v["self_v"][rows]})
             for name, v in cache.items()}

    # transformers' early_stopping=False heuristic: can the best running beam still beat the
    # worst finished one at the current length?
    best_running = run_scores[:, 0] / ((step + 1).astype(jnp.float32) ** length_penalty)
    worst_fin = jnp.where(is_fin, jnp.min(fin_scores, axis=1, keepdims=True), NEG)
    improvable = s["improvable"] & jnp.any(best_running[:, None] > worst_fin, axis=1)
    done = ~jnp.any(improvable) | jnp.all(hits)
    return dict(step=step + 1, cache=cache, last=last, run_seqs=run_seqs, run_scores=run_scores,
                fin_seqs=fin_seqs, fin_scores=fin_scores, is_fin=is_fin, improvable=improvable,
                done=done)

  run_scores = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, NEG), (batch, 1)).astype(jnp.float32)
  state = dict(
      step=jnp.zeros((), jnp.int32), cache=cache,
      last=jnp.full((batch * k,), config.decoder_start_token_id, jnp.int32),
      run_seqs=jnp.full((batch, k, n), pad, jnp.int32), run_scores=run_scores,
      fin_seqs=jnp.full((batch, k, n), pad, jnp.int32),
      fin_scores=jnp.full((batch, k), NEG, jnp.float32),
      is_fin=jnp.zeros((batch, k), bool), improvable=jnp.ones((batch,), bool),
      done=jnp.zeros((), bool))
  return jax.lax.while_loop(cond, body, state)["fin_seqs"][:, 0]


def strip_generated(tokens: np.ndarray, config: T5Config) -> list[list[int]]:
  """Per row: ids up to and including the first EOS (padding removed)."""
  out = []
  for row in np.asarray(tokens).tolist():
    if config.eos_token_id in row:
      row = row[: row.index(config.eos_token_id) + 1]
    else:
      while row and row[-1] == config.pad_token_id:
        row = row[:-1]
    out.append(row)
  return out
