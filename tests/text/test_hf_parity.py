"""Our Flax T5 against transformers' PyTorch T5 on the same saved random weights."""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from llmimg_jax.text import (T5Config, T5EncoderModel, T5ForConditionalGeneration, generate,
                             init_params, load_t5, strip_generated)
from tests.text.utils import _random_t5, _save

TOL = 1e-4  # fp32 max abs diff vs PyTorch
MIN_COMPARED = 20  # greedy must run at least this many tokens


@pytest.fixture(scope="module")
def loaded(checkpoint):
  return load_t5(checkpoint.path)


def _hf_generate(ckpt, batch, **kw) -> list[list[int]]:
  with torch.no_grad():
    out = ckpt.hf_model.generate(input_ids=torch.tensor(batch["input_ids"]).long(),
                                 attention_mask=torch.tensor(batch["attention_mask"]).long(),
                                 do_sample=False, **kw)
  return out[:, 1:].numpy()  # drop the decoder start token


def test_param_layout(checkpoint, loaded):
  config, params = loaded
  untied = checkpoint.name == "gated_untied"
  assert set(params) == ({"shared", "encoder", "decoder"} | ({"lm_head"} if untied else set()))
  assert config.tie_word_embeddings != untied and config.scale_decoder_outputs != untied
  assert params["shared"]["embedding"].shape == (config.vocab_size, config.d_model)
  assert len([k for k in params["decoder"] if k.startswith("block_")]) == config.num_decoder_layers
  # Relative attention bias only in the first block of each stack.
  for stack in ("encoder", "decoder"):
    blocks = params[stack]
    assert "relative_attention_bias" in blocks["block_0"]["layer_0"]["SelfAttention"]
    assert "relative_attention_bias" not in blocks["block_1"]["layer_0"]["SelfAttention"]
  ffn = params["encoder"]["block_0"]["layer_1"]["DenseReluDense"]
  assert set(ffn) == ({"wi_0", "wi_1", "wo"} if untied else {"wi", "wo"})


def test_encoder_and_logits_match_pytorch(checkpoint, loaded, padded_batch):
  config, params = loaded
  ids, mask = padded_batch["input_ids"], padded_batch["attention_mask"]
  rng = np.random.default_rng(0)
  dec = rng.integers(3, config.vocab_size, size=(ids.shape[0], 7)).astype(np.int32)
  dec[:, 0] = config.decoder_start_token_id
  with torch.no_grad():
    ref = checkpoint.hf_model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask),
                              decoder_input_ids=torch.tensor(dec).long())
  ref_enc, ref_logits = ref.encoder_last_hidden_state.numpy(), ref.logits.numpy()

  enc_params = {k: params[k] for k in ("shared", "encoder")}  # encoder alone, same params
  enc = jax.jit(T5EncoderModel(config).apply)({"params": enc_params}, ids, mask)
  assert enc.shape == (*ids.shape, config.d_model) and enc.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(enc), ref_enc, atol=TOL, rtol=0)

  model = T5ForConditionalGeneration(config)
  v = {"params": params}
  logits = jax.jit(model.apply)(v, ids, mask, dec)
  np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=TOL, rtol=0)
  assert np.abs(ref_logits).max() > 1.0  # not a trivially flat comparison

  # Incremental decoding through the KV cache gives the same logits.
  enc_states = model.apply(v, ids, mask, method=model.encode)
  cache = model.apply(v, enc_states, dec.shape[1], method=model.init_cache)
  step = jax.jit(lambda tok, cache: model.apply(v, tok, enc_states, mask, cache=cache,
                                                method=model.decode))
  steps = []
  for t in range(dec.shape[1]):
    step_logits, cache = step(dec[:, t:t + 1], cache)
    steps.append(np.asarray(step_logits))
  assert int(cache["index"]) == dec.shape[1]
  np.testing.assert_allclose(np.concatenate(steps, axis=1), ref_logits, atol=TOL, rtol=0)


def test_greedy_matches_pytorch(checkpoint, loaded, padded_batch):
  config, params = loaded
  n = 24
  ref = strip_generated(_hf_generate(checkpoint, padded_batch, max_new_tokens=n), config)
  ours = np.asarray(generate(params, config, padded_batch["input_ids"],
                             padded_batch["attention_mask"], max_new_tokens=n))
  assert ours.shape == (len(ref), n) and ours.dtype == np.int32
  assert strip_generated(ours, config) == ref
  assert all(len(r) >= MIN_COMPARED for r in ref), [len(r) for r in ref]  # EOS did not cut it
  assert len({t for r in ref for t in r}) >= 5, ref  # not one repeated token
  assert all(len(set(r)) >= 2 for r in ref), ref


def test_greedy_min_new_tokens_matches_pytorch(relu_tied, padded_batch):
  """min_new_tokens holds EOS back in greedy decoding too (an EOS the model emits early)."""
  config, params = load_t5(relu_tied.path)
  n = 12
  eos = int(_hf_generate(relu_tied, padded_batch, max_new_tokens=n)[0, 2])  # row 0's 3rd token
  config = dataclasses.replace(config, eos_token_id=eos)
  for k in (0, 6):
    ref = strip_generated(_hf_generate(relu_tied, padded_batch, max_new_tokens=n,
                                       eos_token_id=eos, min_new_tokens=k), config)
    ours = generate(params, config, padded_batch["input_ids"], padded_batch["attention_mask"],
                    max_new_tokens=n, min_new_tokens=k)
    assert strip_generated(np.asarray(ours), config) == ref, k
    assert (len(ref[0]) <= 3) if k == 0 else (len(ref[0]) > 6), ref[0]  # EOS held back


def test_beam_search_matches_pytorch(checkpoint, loaded, padded_batch):
  """num_beams=4, with an EOS id that the model actually emits so hypotheses finish early."""
  config, params = loaded
  n = 16
  # EOS := the 5th token of the top beam, so that hypothesis finishes early in the real run.
  eos = int(_hf_generate(checkpoint, padded_batch, max_new_tokens=n, num_beams=4)[0, 4])
  config = dataclasses.replace(config, eos_token_id=eos)
  ref = strip_generated(
      _hf_generate(checkpoint, padded_batch, max_new_tokens=n, num_beams=4, eos_token_id=eos),
      config)
  ours = generate(params, config, padded_batch["input_ids"], padded_batch["attention_mask"],
                  max_new_tokens=n, num_beams=4)
  assert strip_generated(np.asarray(ours), config) == ref
  assert any(r[-1] == eos for r in ref), ref  # some beams finished on EOS ...
  assert sum(len(r) for r in ref) >= 20  # ... and the comparison still covers many tokens
  # length_penalty is traced: other values reuse the compiled search. min_new_tokens masks EOS in
  # the log-probs (after log_softmax, as transformers does).
  for kw in ({"length_penalty": 0.0}, {"length_penalty": 2.0}, {"min_new_tokens": 3},
             {"min_new_tokens": 6}):
    ref_kw = strip_generated(_hf_generate(checkpoint, padded_batch, max_new_tokens=n, num_beams=4,
                                          eos_token_id=eos, **kw), config)
    ours_kw = generate(params, config, padded_batch["input_ids"], padded_batch["attention_mask"],
                       max_new_tokens=n, num_beams=4, **kw)
    assert strip_generated(np.asarray(ours_kw), config) == ref_kw, kw
    assert min(len(r) for r in ref_kw) >= kw.get("min_new_tokens", 0), ref_kw


def test_mt5_saved_by_transformers_5_matches_pytorch(mt5_untied, padded_batch):
  """Its config says tied but its lm_head is its own, and MT5 never rescales the decoder output:
  a wrong scale leaves greedy argmax unchanged, so logits and beam search are compared."""
  config, params = load_t5(mt5_untied.path)
  assert not config.tie_word_embeddings and not config.scale_decoder_outputs
  ids, mask = padded_batch["input_ids"], padded_batch["attention_mask"]
  dec = np.full((ids.shape[0], 5), config.decoder_start_token_id, np.int32)
  dec[:, 1:] = np.arange(10, 14)
  with torch.no_grad():
    ref = mt5_untied.hf_model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask),
                              decoder_input_ids=torch.tensor(dec).long()).logits.numpy()
  logits = jax.jit(T5ForConditionalGeneration(config).apply)({"params": params}, ids, mask, dec)
  np.testing.assert_allclose(np.asarray(logits), ref, atol=TOL, rtol=0)
  assert np.abs(ref).max() > 1.0
  n = 10
  ours = generate(params, config, ids, mask, max_new_tokens=n, num_beams=3)
  assert (strip_generated(np.asarray(ours), config)
          == strip_generated(_hf_generate(mt5_untied, padded_batch, max_new_tokens=n, num_beams=3),
                             config))


def _saved_random_t5(path, seed: int, **kw) -> tuple:
  """A random 2-layer T5 saved into `path`: (transformers' reload, our config, our params)."""
  _save(_random_t5(seed, num_layers=2, **kw), str(path))
  return transformers.T5ForConditionalGeneration.from_pretrained(str(path)).eval(), *load_t5(path)


def _random_decoder_ids(config: T5Config, rows: int, length: int) -> np.ndarray:
  dec = np.random.default_rng(0).integers(3, config.vocab_size, (rows, length)).astype(np.int32)
  dec[:, 0] = config.decoder_start_token_id
  return dec


def _assert_encoder_and_logits_match(hf, config: T5Config, params, batch, dec: np.ndarray,
                                     dec_mask: np.ndarray | None = None) -> None:
  ids, mask = batch["input_ids"], batch["attention_mask"]
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask),
             decoder_input_ids=torch.tensor(dec).long(),
             decoder_attention_mask=None if dec_mask is None else torch.tensor(dec_mask))
  model = T5ForConditionalGeneration(config)
  enc, logits = jax.jit(lambda v: (model.apply(v, ids, mask, method=model.encode),
                                   model.apply(v, ids, mask, dec, dec_mask)))({"params": params})
  np.testing.assert_allclose(np.asarray(enc), ref.encoder_last_hidden_state.numpy(), atol=TOL,
                             rtol=0)
  np.testing.assert_allclose(np.asarray(logits), ref.logits.numpy(), atol=TOL, rtol=0)
  assert np.abs(ref.logits.numpy()).max() > 1.0


@pytest.mark.parametrize("feed_forward_proj", ["gelu", "silu", "gated-silu"])
def test_other_ffn_activations_match_pytorch(feed_forward_proj, padded_batch, tmp_path):
  """The FFN activations beside relu and gated-gelu (the checkpoint fixtures'): exact (erf)
  GELU, SiLU and gated SiLU, as transformers' T5 applies them."""
  hf, config, params = _saved_random_t5(tmp_path, 5, feed_forward_proj=feed_forward_proj)
  assert config.feed_forward_proj == feed_forward_proj
  assert config.is_gated == feed_forward_proj.startswith("gated-")
  _assert_encoder_and_logits_match(hf, config, params, padded_batch,
                                   _random_decoder_ids(config, len(padded_batch["input_ids"]), 5))


@pytest.mark.parametrize("feed_forward_proj,ffn", [
    ("gated-gelu", {"dense_act_fn": "gelu"}),  # BLIP-2's FLAN-T5 configs: exact GELU, gated
    ("gated-gelu", {"is_gated_act": False}),
    ("relu", {"dense_act_fn": "gelu_new", "is_gated_act": True})])
def test_dense_act_fn_and_is_gated_act_of_config_json_win_as_in_transformers(
    feed_forward_proj, ffn, padded_batch, tmp_path):
  """transformers writes dense_act_fn and is_gated_act into every T5 config.json and builds the
  FFN from them, not from feed_forward_proj, where they differ (BLIP-2's FLAN-T5 text configs
  say 'gated-gelu' with dense_act_fn 'gelu'). Reading feed_forward_proj alone ran gelu_new there
  (logits 1e-3 off), or refused the checkpoint's gated weights."""
  hf, config, params = _saved_random_t5(tmp_path, 5, feed_forward_proj=feed_forward_proj, **ffn)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert all(saved[k] == v for k, v in ffn.items())
  assert saved["feed_forward_proj"] == feed_forward_proj
  assert (config.activation, config.is_gated) == (hf.config.dense_act_fn, hf.config.is_gated_act)
  _assert_encoder_and_logits_match(hf, config, params, padded_batch,
                                   _random_decoder_ids(config, len(padded_batch["input_ids"]), 5))
  assert T5Config.from_dict(config.to_dict()) == config
  again = transformers.T5Config(**config.to_dict())
  assert (again.dense_act_fn, again.is_gated_act) == (config.activation, config.is_gated)


def test_layer_norm_epsilon_matches_pytorch(padded_batch, tmp_path):
  """An epsilon large against the activations' mean square (~4 here), so that every RMS norm,
  the final ones included, is visibly changed by it."""
  hf, config, params = _saved_random_t5(tmp_path, 5, layer_norm_epsilon=0.5)
  assert config.layer_norm_epsilon == 0.5
  _assert_encoder_and_logits_match(hf, config, params, padded_batch,
                                   _random_decoder_ids(config, len(padded_batch["input_ids"]), 5))


def test_tied_model_saved_unscaled_matches_pytorch(padded_batch, tmp_path):
  """Tied embeddings but `"scale_decoder_outputs": false` in config.json (a transformers 5 save
  of a T5 v1.1-style model): the scale follows that flag, not the tying."""
  _save(_random_t5(6, num_layers=2), str(tmp_path))
  cfg = json.loads((tmp_path / "config.json").read_text())
  assert cfg["scale_decoder_outputs"] and cfg["tie_word_embeddings"]
  (tmp_path / "config.json").write_text(json.dumps({**cfg, "scale_decoder_outputs": False}))
  hf = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
  config, params = load_t5(tmp_path)
  assert config.tie_word_embeddings and not config.scale_decoder_outputs
  assert not hf.config.scale_decoder_outputs and "lm_head" not in params
  _assert_encoder_and_logits_match(hf, config, params, padded_batch,
                                   _random_decoder_ids(config, len(padded_batch["input_ids"]), 5))


def test_right_padded_decoder_attention_mask_matches_pytorch(relu_tied, padded_batch):
  """Logits at every position, the padded ones included (the only ones the mask changes: the
  causal mask already hides later positions from earlier ones)."""
  config, params = load_t5(relu_tied.path)
  dec = _random_decoder_ids(config, len(padded_batch["input_ids"]), 6)
  dec_mask = (np.arange(6)[None] < np.array([[6], [2], [4]])).astype(np.int32)
  _assert_encoder_and_logits_match(relu_tied.hf_model, config, params, padded_batch, dec, dec_mask)


def test_decoding_chunks_through_the_cache_matches_pytorch(relu_tied, padded_batch):
  """Several tokens per cached decode call (3, 2, 3): each chunk sits after the previous ones."""
  config, params = load_t5(relu_tied.path)
  ids, mask = padded_batch["input_ids"], padded_batch["attention_mask"]
  dec = _random_decoder_ids(config, len(ids), 8)
  with torch.no_grad():
    ref = relu_tied.hf_model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask),
                             decoder_input_ids=torch.tensor(dec).long()).logits.numpy()
  model, v = T5ForConditionalGeneration(config), {"params": params}
  enc = model.apply(v, ids, mask, method=model.encode)
  cache = model.apply(v, enc, dec.shape[1], method=model.init_cache)
  chunks = []
  for start, stop in ((0, 3), (3, 5), (5, 8)):
    logits, cache = model.apply(v, dec[:, start:stop], enc, mask, cache=cache, method=model.decode)
    chunks.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(chunks, axis=1), ref, atol=TOL, rtol=0)
  assert int(cache["index"]) == dec.shape[1]


def test_more_tokens_than_the_cache_holds_are_refused_by_name():
  """t new tokens past init_cache's max_length failed in dynamic_update_slice, naming shapes only
  ('update shape (1, 2, 5, 64) for operand shape (1, 2, 4, 64)'). An index that runs past it is
  traced, not checked (decode's docstring); generate never does."""
  config = T5Config.byt5_small_scratch(d_model=32, num_layers=1, num_heads=2, dropout_rate=0.0)
  model, v = T5ForConditionalGeneration(config), {"params": init_params(config, jax.random.key(0))}
  enc, enc_mask = jnp.zeros((1, 3, 32)), jnp.ones((1, 3), jnp.int32)
  cache = model.apply(v, enc, 4, method=model.init_cache)
  with pytest.raises(ValueError, match=r"^decode: 5 tokens overflow the cache \(init_cache's "
                     r"max_length=4\)\."):
    model.apply(v, jnp.zeros((1, 5), jnp.int32), enc, enc_mask, cache=cache, method=model.decode)
  logits, cache = model.apply(v, jnp.zeros((1, 4), jnp.int32), enc, enc_mask, cache=cache,
                              method=model.decode)  # 4 fit
  assert logits.shape == (1, 4, config.vocab_size) and int(cache["index"]) == 4


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 200), (64, 50), (128, 100)])
def test_relative_position_buckets_equal_transformers(num_buckets, max_distance):
  """Inside jit, as the model runs it, over +-4096 (where a division by a constant, compiled as a
  multiplication, put some exact integers one bucket low)."""
  from transformers.models.t5.modeling_t5 import T5Attention as HFT5Attention
  from llmimg_jax.text.modeling import relative_position_bucket
  relative = np.arange(-4096, 4097, dtype=np.int32)
  for bidirectional in (True, False):
    ref = HFT5Attention._relative_position_bucket(torch.tensor(relative), bidirectional,
                                                  num_buckets, max_distance).numpy()
    ours = jax.jit(relative_position_bucket, static_argnums=(1, 2, 3))(
        relative, bidirectional, num_buckets, max_distance)
    np.testing.assert_array_equal(np.asarray(ours), ref)


def test_generation_config_token_ids_are_used_as_transformers_does(relu_tied, padded_batch,
                                                                    tmp_path, caplog):
  """generation_config.json's decoder start and EOS ids win over config.json's (as in transformers'
  `generate`), and its decoding defaults, which `generate` here does not apply, are named."""
  import json
  import logging
  import shutil
  path = tmp_path / "ckpt"
  shutil.copytree(relu_tied.path, path)
  gen = json.loads((path / "generation_config.json").read_text())
  gen.update(decoder_start_token_id=40, eos_token_id=104, num_beams=3, max_length=50)
  (path / "generation_config.json").write_text(json.dumps(gen))
  hf = transformers.T5ForConditionalGeneration.from_pretrained(path).eval()
  with torch.no_grad():
    ref = hf.generate(input_ids=torch.tensor(padded_batch["input_ids"]).long(),
                      attention_mask=torch.tensor(padded_batch["attention_mask"]).long(),
                      num_beams=1, do_sample=False, max_new_tokens=16)[:, 1:].numpy()
  with caplog.at_level(logging.WARNING):
    config, params = load_t5(path)
  assert (config.decoder_start_token_id, config.eos_token_id) == (40, 104)
  assert "generation_config.json" in caplog.text and "max_length=50, num_beams=3" in caplog.text
  ours = np.asarray(generate(params, config, padded_batch["input_ids"],
                             padded_batch["attention_mask"], max_new_tokens=16))
  assert strip_generated(ours, config) == strip_generated(ref, config)
  assert strip_generated(ours, config) != strip_generated(
      np.asarray(generate(params, load_t5(relu_tied.path)[0], padded_batch["input_ids"],
                          padded_batch["attention_mask"], max_new_tokens=16)), config)


@pytest.mark.parametrize("feed_forward_proj,d_kv", [("relu", 16), ("gated-gelu", 16), ("relu", 4)])
def test_fresh_init_scales_equal_transformers(feed_forward_proj, d_kv):
  """init_params (the from-scratch text encoder of the default configs) draws every weight with
  the std of transformers' T5 _init_weights: compared leaf by leaf through the loader's layout.
  d_kv=4: num_heads * d_kv != d_model, as the attention output's init std depends on."""
  from llmimg_jax.text.loading import convert_state_dict
  hf_config = transformers.T5Config(
      vocab_size=512, d_model=64, d_kv=d_kv, d_ff=128, num_heads=4, num_layers=2,
      feed_forward_proj=feed_forward_proj, tie_word_embeddings=False)
  torch.manual_seed(0)
  hf = transformers.T5ForConditionalGeneration(hf_config)
  config = T5Config.from_dict(hf_config.to_dict())
  state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  _, reference = convert_state_dict(state, config)  # transformers' draws in our layout
  ours = init_params(config, jax.random.PRNGKey(0))
  flat_ref = dict(jax.tree_util.tree_flatten_with_path(reference)[0])
  flat_ours = dict(jax.tree_util.tree_flatten_with_path(ours)[0])
  assert flat_ref.keys() == flat_ours.keys()
  for path, ref in flat_ref.items():
    name, ref, got = jax.tree_util.keystr(path), np.asarray(ref), np.asarray(flat_ours[path])
    assert got.shape == ref.shape, name
    if ref.std() == 0:  # layer norms: ones
      np.testing.assert_array_equal(got, ref, err_msg=name)
    else:
      assert got.std() == pytest.approx(ref.std(), rel=0.2), name
      assert abs(got.mean()) < 0.2 * ref.std(), name


def test_generation_config_lengths_are_named_as_generate_takes_them(relu_tied, padded_batch,
                                                                     tmp_path, caplog):
  """The warning said to pass generation_config.json's max_length and min_length to `generate`,
  which takes neither (a TypeError); as its max_new_tokens and min_new_tokens, one less each, our
  generation equals transformers' under that file."""
  import json
  import logging
  import shutil
  path = tmp_path / "ckpt"
  shutil.copytree(relu_tied.path, path)
  config, params = load_t5(path)
  free = np.asarray(generate(params, config, padded_batch["input_ids"],
                             padded_batch["attention_mask"], max_new_tokens=6))
  # EOS: the token a row repeats (210), held back there for exactly min_new_tokens tokens
  eos = next(int(row[0]) for row in free if (row == row[0]).all())
  gen = json.loads((path / "generation_config.json").read_text())
  (path / "generation_config.json").write_text(json.dumps({**gen, "max_length": 7,
                                                           "min_length": 5, "eos_token_id": eos}))
  hf = transformers.T5ForConditionalGeneration.from_pretrained(path).eval()
  with torch.no_grad():
    ref = hf.generate(input_ids=torch.tensor(padded_batch["input_ids"]).long(),
                      attention_mask=torch.tensor(padded_batch["attention_mask"]).long())
  with caplog.at_level(logging.WARNING):
    config, params = load_t5(path)
  assert ("sets decoding defaults (max_length=7, min_length=5) that llmimg_jax does not apply: "
          "pass them to `generate` to decode as transformers would (max_length=L as "
          "max_new_tokens=L-1, min_length=L as min_new_tokens=L-1") in caplog.text
  ours = np.asarray(generate(params, config, padded_batch["input_ids"],
                             padded_batch["attention_mask"], max_new_tokens=6, min_new_tokens=4))
  assert strip_generated(ours, config) == strip_generated(ref[:, 1:].numpy(), config)
  assert ref.shape[1] == 7 and strip_generated(ours, config) != strip_generated(np.asarray(
      generate(params, config, padded_batch["input_ids"], padded_batch["attention_mask"],
               max_new_tokens=6, min_new_tokens=3)), config)
