"""T5 in Flax linen, numerically matching transformers' PyTorch T5.

Param names mirror the Hugging Face state dict (`encoder/block_0/layer_0/SelfAttention/q/kernel`
is `encoder.block.0.layer.0.SelfAttention.q.weight` transposed), so loading is a rename. Params
are fp32; `dtype` is the compute dtype (fp32 or bf16); norms, softmax and logits are computed in
fp32.

Decoder cache (generation): a dict {'index': int32 [], 'block_i': {'self_k', 'self_v':
[b, heads, max_len, d_kv], 'cross_k', 'cross_v': [b, heads, enc_len, d_kv]}} made by `init_cache`
and advanced by `decode`.
Keys and values are kept head-major, the layout the attention matmuls read, so a decoding step does
not transpose the whole cache (on CPU those copies were ~15% of greedy generation).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llmimg_jax.text.config import T5Config
from llmimg_jax.text.layers import Dense, vocab_logits

Array = jax.Array
Cache = dict[str, Any]
MASK_VALUE = -1e9  # additive attention mask; finite so fully masked rows stay NaN-free
_ACT = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def _normal(std: float):
  return nn.initializers.normal(stddev=std)


def relative_position_bucket(relative_position: Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
  """T5's bucketing of key_pos - query_pos, bit-exact with transformers: the log-spaced buckets
  are a host-side table (float32 as transformers computes them; in a jitted program XLA would
  turn the division by a constant into a multiplication, one ulp off at exact integers)."""
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets = buckets + (relative_position > 0).astype(relative_position.dtype) * num_buckets
    relative_position = jnp.abs(relative_position)
  else:
    relative_position = -jnp.minimum(relative_position, 0)
  table = _distance_buckets(num_buckets, max_distance)  # [max_distance + 1]
  return buckets + jnp.asarray(table)[jnp.minimum(relative_position, max_distance)]


@functools.cache
def _distance_buckets(num_buckets: int, max_distance: int) -> np.ndarray:
  """The bucket of each distance 0..max_distance (farther ones share the last)."""
  distance = np.arange(max_distance + 1, dtype=np.int32)
  max_exact = num_buckets // 2
  with np.errstate(divide="ignore"):  # log(0) for the distances below max_exact, not used
    scaled = (np.log(distance.astype(np.float32) / np.float32(max_exact))
              / np.float32(math.log(max_distance / max_exact))
              * np.float32(num_buckets - max_exact))
  large = np.minimum(max_exact + np.nan_to_num(scaled, neginf=0).astype(np.int32), num_buckets - 1)
  return np.where(distance < max_exact, distance, large).astype(np.int32)


class T5LayerNorm(nn.Module):
  """RMS norm: no mean subtraction, no bias, fp32 variance."""
  d_model: int
  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    weight = self.param("weight", nn.initializers.ones, (self.d_model,), jnp.float32)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (jax.lax.broadcast_to_rank(weight, x32.ndim) * x32).astype(self.dtype)


class T5Attention(nn.Module):
  """Multi-head attention without 1/sqrt(d) scaling; optional relative position bias."""
  config: T5Config
  has_relative_bias: bool = False
  bidirectional: bool = True
  dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    inner, d = c.num_heads * c.d_kv, c.d_model
    dense = lambda n, std: Dense(n, _normal(std), self.dtype)
    self.q = dense(inner, (d * c.d_kv) ** -0.5)
    self.k = dense(inner, d ** -0.5)
    self.v = dense(inner, d ** -0.5)
    self.o = dense(d, inner ** -0.5)
    if self.has_relative_bias:
      self.relative_attention_bias = nn.Embed(c.relative_attention_num_buckets, c.num_heads,
                                              embedding_init=_normal(d ** -0.5),
                                              param_dtype=jnp.float32)
    self.dropout = nn.Dropout(c.dropout_rate)

  def _heads(self, x: Array) -> Array:  # [b, l, h*dk] -> [b, h, l, dk]
    return x.reshape(x.shape[:2] + (self.config.num_heads, self.config.d_kv)).transpose(0, 2, 1, 3)

  def query(self, x: Array) -> Array:
    return self._heads(self.q(x))

  def key_value(self, x: Array) -> tuple[Array, Array]:
    return self._heads(self.k(x)), self._heads(self.v(x))

  def compute_bias(self, q_pos: Array, k_pos: Array) -> Array:
    """[1, heads, q, k] fp32 bias for absolute query/key positions q_pos [q], k_pos [k]."""
    c = self.config
    buckets = relative_position_bucket(k_pos[None, :] - q_pos[:, None], self.bidirectional,
                                       c.relative_attention_num_buckets,
                                       c.relative_attention_max_distance)  # [q, k]
    bias = self.relative_attention_bias(buckets)  # [q, k, h]
    return jnp.transpose(bias, (2, 0, 1))[None].astype(jnp.float32)

  def attend(self, q: Array, k: Array, v: Array, bias: Array, deterministic: bool) -> Array:
    """q [b, h, q, dk], k/v [b, h, k, dk], bias broadcastable to [b, h, q, k] -> [b, q, d_model]."""
    # fp32 logits even for bf16 q/k: T5 attention logits are unscaled, bf16 would round them
    # coarsely.
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) + bias
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    weights = self.dropout(weights, deterministic=deterministic)
    out = jnp.einsum("bhqk,bhkd->bqhd", weights, v)  # [b, q, h, dk]
    return self.o(jax.lax.collapse(out, 2))  # [b, q, h * dk] (reshape's -1 fails on 0 rows)


class T5SelfAttentionLayer(nn.Module):
  config: T5Config
  has_relative_bias: bool
  causal: bool
  dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    self.SelfAttention = T5Attention(c, self.has_relative_bias, not self.causal, self.dtype)
    self.layer_norm = T5LayerNorm(c.d_model, c.layer_norm_epsilon, self.dtype)
    self.dropout = nn.Dropout(c.dropout_rate)

  def __call__(self, x: Array, mask_bias: Array, position_bias: Array | None, deterministic: bool,
               cache: Cache | None = None) -> tuple[Array, Array, Cache | None]:
    attn = self.SelfAttention
    h = self.layer_norm(x)
    q = attn.query(h)
    k, v = attn.key_value(h)
    offset = jnp.zeros((), jnp.int32)
    if cache is not None:  # this step's keys/values at cache['index'] (clamped to fit: see decode)
      offset = cache["index"]
      write = lambda c, x: jax.lax.dynamic_update_slice_in_dim(c, x.astype(c.dtype), offset, 2)
      k, v = write(cache["self_k"], k), write(cache["self_v"], v)
      cache = {**cache, "self_k": k, "self_v": v}
    if position_bias is None:
      if self.has_relative_bias:
        q_pos = offset + jnp.arange(x.shape[1], dtype=jnp.int32)
        position_bias = attn.compute_bias(q_pos, jnp.arange(k.shape[2], dtype=jnp.int32))
      else:
        position_bias = jnp.zeros((1, 1, 1, 1), jnp.float32)
    y = attn.attend(q, k, v, position_bias + mask_bias, deterministic)
    return x + self.dropout(y, deterministic=deterministic), position_bias, cache


class T5CrossAttentionLayer(nn.Module):
  config: T5Config
  dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    self.EncDecAttention = T5Attention(c, False, True, self.dtype)
    self.layer_norm = T5LayerNorm(c.d_model, c.layer_norm_epsilon, self.dtype)
    self.dropout = nn.Dropout(c.dropout_rate)

  def key_value(self, encoder_states: Array) -> tuple[Array, Array]:
    return self.EncDecAttention.key_value(encoder_states)

  def __call__(self, x: Array, kv: tuple[Array, Array], mask_bias: Array,
               deterministic: bool) -> Array:
    attn = self.EncDecAttention
    q = attn.query(self.layer_norm(x))
    y = attn.attend(q, kv[0], kv[1], mask_bias, deterministic)
    return x + self.dropout(y, deterministic=deterministic)


class T5FeedForwardLayer(nn.Module):
  config: T5Config
  dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    self.DenseReluDense = T5DenseActDense(c, self.dtype)
    self.layer_norm = T5LayerNorm(c.d_model, c.layer_norm_epsilon, self.dtype)
    self.dropout = nn.Dropout(c.dropout_rate)

  def __call__(self, x: Array, deterministic: bool) -> Array:
    y = self.DenseReluDense(self.layer_norm(x), deterministic)
    return x + self.dropout(y, deterministic=deterministic)


class T5DenseActDense(nn.Module):
  """FFN (act(wi x), wo) or gated FFN (act(wi_0 x) * wi_1 x, wo); act is config.activation's."""
  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    c = self.config
    dense = lambda n, std, name: Dense(n, _normal(std), self.dtype, name=name)
    act = _ACT[c.activation]
    std = c.d_model ** -0.5  # the input projections' init (transformers' T5 _init_weights)
    if c.is_gated:
      h = act(dense(c.d_ff, std, "wi_0")(x)) * dense(c.d_ff, std, "wi_1")(x)
    else:
      h = act(dense(c.d_ff, std, "wi")(x))  # [b, l, d_ff]
    h = nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)
    return dense(c.d_model, c.d_ff ** -0.5, "wo")(h)


class T5Block(nn.Module):
  config: T5Config
  has_relative_bias: bool
  is_decoder: bool
  dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    layers = [T5SelfAttentionLayer(c, self.has_relative_bias, self.is_decoder, self.dtype)]
    if self.is_decoder:
      layers.append(T5CrossAttentionLayer(c, self.dtype))
    layers.append(T5FeedForwardLayer(c, self.dtype))
    self.layer = layers

  def cross_key_value(self, encoder_states: Array) -> tuple[Array, Array]:
    return self.layer[1].key_value(encoder_states)

  def __call__(self, x: Array, mask_bias: Array, position_bias: Array | None, deterministic: bool,
               *, cross_kv: tuple[Array, Array] | None = None,
               cross_mask_bias: Array | None = None,
               cache: Cache | None = None) -> tuple[Array, Array, Cache | None]:
    x, position_bias, cache = self.layer[0](x, mask_bias, position_bias, deterministic, cache)
    if self.is_decoder:
      x = self.layer[1](x, cross_kv, cross_mask_bias, deterministic)
    x = self.layer[-1](x, deterministic)
    return x, position_bias, cache


class T5Stack(nn.Module):
  """Encoder or decoder stack over embedded inputs -> (final-normed states, new cache or None)."""
  config: T5Config
  is_decoder: bool
  dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    n = c.num_decoder_layers if self.is_decoder else c.num_layers
    self.block = [T5Block(c, i == 0, self.is_decoder, self.dtype) for i in range(n)]
    self.final_layer_norm = T5LayerNorm(c.d_model, c.layer_norm_epsilon, self.dtype)
    self.dropout = nn.Dropout(c.dropout_rate)

  def cross_key_values(self, encoder_states: Array) -> list[tuple[Array, Array]]:
    return [blk.cross_key_value(encoder_states) for blk in self.block]

  def __call__(self, x: Array, mask_bias: Array, deterministic: bool = True, *,
               encoder_states: Array | None = None, cross_mask_bias: Array | None = None,
               cache: Cache | None = None) -> tuple[Array, Cache | None]:
    x = self.dropout(x, deterministic=deterministic)
    position_bias = None
    new_cache = None if cache is None else {"index": cache["index"] + x.shape[1]}
    for i, blk in enumerate(self.block):
      name, layer_cache, cross_kv = f"block_{i}", None, None
      if cache is not None:
        layer_cache = {**cache[name], "index": cache["index"]}
        cross_kv = (layer_cache["cross_k"], layer_cache["cross_v"])
      elif self.is_decoder:
        cross_kv = blk.cross_key_value(encoder_states)
      x, position_bias, layer_cache = blk(x, mask_bias, position_bias, deterministic,
                                          cross_kv=cross_kv, cross_mask_bias=cross_mask_bias,
                                          cache=layer_cache)
      if cache is not None:
        layer_cache.pop("index")
        new_cache[name] = layer_cache
    x = self.final_layer_norm(x)
    return self.dropout(x, deterministic=deterministic), new_cache


def padding_mask_bias(mask: Array) -> Array:
  """[b, k] 1/0 mask -> additive [b, 1, 1, k] fp32 bias."""
  return jnp.where(mask[:, None, None, :].astype(bool), 0.0, MASK_VALUE).astype(jnp.float32)


def _embed(config: T5Config) -> nn.Embed:
  """Looked up in fp32 and cast after (the same values): its gradient is summed in fp32."""
  return nn.Embed(config.vocab_size, config.d_model, embedding_init=_normal(1.0),
                  dtype=jnp.float32, param_dtype=jnp.float32, name="shared")


def _encode(shared: nn.Embed, encoder: T5Stack, input_ids: Array, attention_mask: Array | None,
            deterministic: bool) -> Array:
  if attention_mask is None:
    attention_mask = jnp.ones_like(input_ids)
  x = shared(input_ids.astype(jnp.int32)).astype(encoder.dtype)  # [b, l, d_model]
  return encoder(x, padding_mask_bias(attention_mask), deterministic)[0]


class T5EncoderModel(nn.Module):
  """The encoder alone: params {'shared': {'embedding'}, 'encoder': {...}}."""
  config: T5Config
  dtype: Any = jnp.float32

  def setup(self):
    self.shared = _embed(self.config)
    self.encoder = T5Stack(self.config, False, self.dtype)

  def __call__(self, input_ids: Array, attention_mask: Array | None = None,
               deterministic: bool = True) -> Array:
    """input_ids, attention_mask [b, l] -> last hidden state [b, l, d_model] (compute dtype)."""
    return _encode(self.shared, self.encoder, input_ids, attention_mask, deterministic)


class T5ForConditionalGeneration(nn.Module):
  """Params {'shared', 'encoder', 'decoder'} plus 'lm_head' when not tie_word_embeddings.

  `{k: params[k] for k in ('shared', 'encoder')}` are valid T5EncoderModel params.
  """
  config: T5Config
  dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    self.shared = _embed(c)
    self.encoder = T5Stack(c, False, self.dtype)
    self.decoder = T5Stack(c, True, self.dtype)
    if not c.tie_word_embeddings:
      self.lm_head = Dense(c.vocab_size, _normal(1.0), jnp.float32)  # logits in fp32 (decode)

  def __call__(self, input_ids: Array, attention_mask: Array | None, decoder_input_ids: Array,
               decoder_attention_mask: Array | None = None, deterministic: bool = True) -> Array:
    """Teacher-forced logits, fp32 [b, decoder_len, vocab]."""
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    encoder_states = self.encode(input_ids, attention_mask, deterministic)
    return self.decode(decoder_input_ids, encoder_states, attention_mask,
                       decoder_attention_mask=decoder_attention_mask,
                       deterministic=deterministic)[0]

  def encode(self, input_ids: Array, attention_mask: Array | None = None,
             deterministic: bool = True) -> Array:
    return _encode(self.shared, self.encoder, input_ids, attention_mask, deterministic)

  def decode(self, decoder_input_ids: Array, encoder_states: Array, encoder_mask: Array, *,
             decoder_attention_mask: Array | None = None, cache: Cache | None = None,
             deterministic: bool = True) -> tuple[Array, Cache | None]:
    """decoder_input_ids [b, t] -> (fp32 logits [b, t, vocab], advanced cache or None).

    Without a cache the whole (causal) sequence is decoded; with one, the t new tokens sit at
    positions cache['index'] ... and attend to everything cached before them. index + t must not
    pass init_cache's max_length; only t is checked (the index is traced): past it the cache's
    last positions are overwritten and the logits are wrong. generate() stays within it.
    """
    t = decoder_input_ids.shape[1]
    k_len = t if cache is None else cache["block_0"]["self_k"].shape[2]  # the cache's max_length
    if t > k_len:  # dynamic_update_slice would refuse it naming shapes only
      raise ValueError(f"decode: {t} tokens overflow the cache (init_cache's max_length={k_len}).")
    q_pos = jnp.arange(t) + (0 if cache is None else cache["index"])
    causal = jnp.arange(k_len)[None, :] <= q_pos[:, None]  # [t, k]
    mask_bias = jnp.where(causal, 0.0, MASK_VALUE)[None, None].astype(jnp.float32)
    if decoder_attention_mask is not None:
      if cache is not None:
        raise ValueError("decoder_attention_mask is only supported without a cache.")
      mask_bias = mask_bias + padding_mask_bias(decoder_attention_mask)
    x = self.shared(decoder_input_ids.astype(jnp.int32)).astype(self.dtype)  # [b, t, d_model]
    x, cache = self.decoder(x, mask_bias, deterministic, encoder_states=encoder_states,
                            cross_mask_bias=padding_mask_bias(encoder_mask), cache=cache)
    if self.config.scale_decoder_outputs:
      x = x * (self.config.d_model ** -0.5)
    # The vocabulary projection in fp32 whatever the compute dtype: bf16 logits keep ~3 digits,
    # which breaks near-ties and coarsens beam scores and sampling probabilities.
    x = x.astype(jnp.float32)  # [b, t, d_model]
    if self.config.tie_word_embeddings:
      return vocab_logits(x, self.shared.embedding), cache  # [b, t, vocab]
    return self.lm_head(x), cache

  def init_cache(self, encoder_states: Array, max_length: int) -> Cache:
    """A zeroed self-attention cache of max_length positions, with cross-attention K/V computed."""
    c, b = self.config, encoder_states.shape[0]
    shape = (b, c.num_heads, max_length, c.d_kv)
    cache: Cache = {"index": jnp.zeros((), jnp.int32)}
    for i, (k, v) in enumerate(self.decoder.cross_key_values(encoder_states)):
      cache[f"block_{i}"] = {"self_k": jnp.zeros(shape, k.dtype),
                             "self_v": jnp.zeros(shape, v.dtype), "cross_k": k, "cross_v": v}
    return cache
