"""Checkpoint formats and loud, specific errors for broken checkpoints."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from llmimg_jax.text import T5Config, TextGenerator, load_t5
from llmimg_jax.text.__main__ import main
from tests.text.utils import copy_config


def _assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference(checkpoint):
  return load_t5(checkpoint.path)


def test_sharded_safetensors_load_the_same(checkpoint, reference, tmp_path):
  checkpoint.hf_model.save_pretrained(tmp_path, max_shard_size="40KB")
  shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
  assert "model.safetensors.index.json" in os.listdir(tmp_path) and len(shards) > 2
  copy_config(checkpoint.path, tmp_path)  # keep the exact tie/scale flags of the reference
  config, params = load_t5(tmp_path)
  assert config == reference[0]
  _assert_same_params(params, reference[1])


@pytest.mark.parametrize("shard", [False, True])
def test_variant_weights_load_the_same(shard, relu_tied, tmp_path):
  # save_pretrained(DIR, variant="fp16"), as diffusers ships T5 text encoders:
  # model.fp16.safetensors or model.safetensors.index.fp16.json and its shards were 'No T5 weights'.
  relu_tied.hf_model.save_pretrained(tmp_path, variant="fp16",
                                     **({"max_shard_size": "40KB"} if shard else {}))
  assert ("model.safetensors.index.fp16.json" if shard else "model.fp16.safetensors") in set(
      os.listdir(tmp_path))
  config, params = load_t5(tmp_path)
  reference = load_t5(relu_tied.path)
  assert config == reference[0]
  _assert_same_params(params, reference[1])
  (tmp_path / "model.bf16.safetensors").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="several variants \\(bf16, fp16\\)"):
    load_t5(tmp_path)


def test_pytorch_bin_loads_the_same(checkpoint, reference, tmp_path):
  # transformers 5 only writes safetensors; write the legacy pickle as older versions did. The
  # state dict carries tied copies (encoder/decoder.embed_tokens, a tied lm_head), which load away,
  # and the cross-attention bias that old T5 checkpoints hold and transformers ignores.
  state = checkpoint.hf_model.state_dict()
  assert "encoder.embed_tokens.weight" in state and "lm_head.weight" in state
  cross_bias = "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"
  state[cross_bias] = torch.randn(16, 4)
  torch.save(state, tmp_path / "pytorch_model.bin")
  copy_config(checkpoint.path, tmp_path)
  config, params = load_t5(tmp_path)
  assert config == reference[0]
  _assert_same_params(params, reference[1])


def test_sharded_pytorch_bin_loads_the_same(checkpoint, reference, tmp_path):
  """pytorch_model-0000N-of-0000M.bin shards with their index, as transformers 4 wrote them."""
  state = checkpoint.hf_model.state_dict()
  names = sorted(state)
  shards = {f"pytorch_model-0000{i + 1}-of-00002.bin": names[i::2] for i in range(2)}
  for file, keys in shards.items():
    torch.save({k: state[k] for k in keys}, tmp_path / file)
  weight_map = {k: file for file, keys in shards.items() for k in keys}
  (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
  copy_config(checkpoint.path, tmp_path)
  config, params = load_t5(tmp_path)
  assert config == reference[0]
  _assert_same_params(params, reference[1])


def test_bf16_checkpoints_load_as_their_weights_upcast(relu_tied, tmp_path):
  """A model saved in bfloat16, as safetensors and as a PyTorch pickle, loads to fp32 params equal
  to the fp32 checkpoint's rounded to bf16."""
  hf_bf16 = copy.deepcopy(relu_tied.hf_model).to(torch.bfloat16)
  hf_bf16.save_pretrained(tmp_path / "safetensors")
  copy_config(relu_tied.path, tmp_path / "bin")
  torch.save(hf_bf16.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
  config, params = load_t5(relu_tied.path)
  upcast = jax.tree.map(lambda x: np.asarray(x.astype(jnp.bfloat16).astype(jnp.float32)), params)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params),
                                                      jax.tree.leaves(upcast)))
  for name in ("safetensors", "bin"):
    loaded_config, loaded = load_t5(tmp_path / name)
    assert loaded_config == config
    assert {x.dtype for x in jax.tree.leaves(loaded)} == {jnp.dtype(jnp.float32)}
    _assert_same_params(loaded, upcast)


def test_safetensors_are_read_on_the_host(tmp_path):
  """safe_open(framework="flax") put every tensor on the default device and read it back (device
  memory and transfers for arrays that end in NumPy; a device's error, out of memory, was named
  'Could not read safetensors file ... Is it truncated?'); no device is touched now, and bf16,
  fp16 and fp32 values are read exactly."""
  from safetensors.numpy import save_file

  from llmimg_jax.text.weight_files import read_safetensors
  values = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4) + np.float32(1 / 3)
  stored = {"bf16": values.astype(jnp.bfloat16), "fp16": values.astype(np.float16), "fp32": values}
  save_file(stored, str(tmp_path / "w.safetensors"))
  with jax.transfer_guard("disallow"):
    state = read_safetensors(str(tmp_path / "w.safetensors"))
  assert {k: (type(v), v.dtype) for k, v in state.items()} == {
      k: (np.ndarray, np.dtype(np.float32)) for k in stored}
  for k, v in stored.items():
    np.testing.assert_array_equal(state[k], v.astype(np.float32))


def test_load_t5_casts_every_param_to_dtype(relu_tied):
  _, params = load_t5(relu_tied.path)
  _, low = load_t5(relu_tied.path, jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(low)} == {jnp.dtype(jnp.bfloat16)}
  _assert_same_params(low, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))


def test_checkpoint_path_under_the_home_directory(relu_tied, tmp_path, monkeypatch):
  shutil.copytree(relu_tied.path, tmp_path / "ckpt")
  monkeypatch.setenv("HOME", str(tmp_path))
  config, params = load_t5("~/ckpt")
  reference = load_t5(relu_tied.path)
  assert config == reference[0]
  _assert_same_params(params, reference[1])


def test_embedding_stored_only_under_an_alias_loads_the_same(checkpoint, reference, tmp_path):
  # transformers loads such a file (embed_tokens is tied to shared); so do we.
  state = checkpoint.hf_model.state_dict()
  shared = state.pop("shared.weight")
  assert torch.equal(state["encoder.embed_tokens.weight"], shared)
  torch.save(state, tmp_path / "pytorch_model.bin")
  copy_config(checkpoint.path, tmp_path)
  config, params = load_t5(tmp_path)
  assert config == reference[0]
  _assert_same_params(params, reference[1])


def test_encoder_only(relu_tied, tmp_path):
  config, params = load_t5(relu_tied.path, encoder_only=True)
  assert set(params) == {"shared", "encoder"}
  hf_cfg = transformers.T5Config.from_pretrained(relu_tied.path)
  torch.manual_seed(0)
  hf_encoder = transformers.T5EncoderModel(hf_cfg).eval()
  hf_encoder.save_pretrained(tmp_path)  # no decoder weights at all
  transformers.ByT5Tokenizer().save_pretrained(tmp_path)
  _, enc_params = load_t5(tmp_path, encoder_only=True)
  assert set(enc_params) == {"shared", "encoder"}
  with pytest.raises(ValueError, match="encoder-only checkpoint, e.g. saved by T5EncoderModel: "
                                       "load it with encoder_only=True") as e:
    load_t5(tmp_path)
  # The first names comma-joined (no list repr) and how many more.
  assert re.search(r"missing params decoder/block_0/\S+, decoder/block_0/\S+, .* and \d+ more",
                   str(e.value)) and "['" not in str(e.value)
  assert len(str(e.value)) < 1000  # the first names and a count, not all of them

  # TextGenerator and the CLI's --encode_out load it; generating says why it cannot.
  generator = TextGenerator.from_pretrained(tmp_path, max_length=16, encoder_only=True)
  batch = generator.tokenizer(["a red fox", "x"])
  with torch.no_grad():
    ref = hf_encoder(input_ids=torch.tensor(batch["input_ids"]).long(),
                     attention_mask=torch.tensor(batch["attention_mask"])).last_hidden_state
  np.testing.assert_allclose(generator.encode(["a red fox", "x"]), ref.numpy(), atol=1e-4)
  with pytest.raises(ValueError, match="holds an encoder only .* cannot generate"):
    generator.generate(["a red fox"])
  out = tmp_path / "states.npy"
  assert main(["--model", str(tmp_path), "--text", "a red fox", "--text", "x", "--max_length",
               "16", "--encode_out", str(out)]) == 0
  np.testing.assert_allclose(np.load(out), ref.numpy(), atol=1e-4)


def test_config_from_dict_follows_hf_semantics():
  old = T5Config.from_dict({"tie_word_embeddings": False, "eos_token_id": [1, 2], "d_model": 64})
  assert not old.tie_word_embeddings and not old.scale_decoder_outputs and old.eos_token_id == 1
  assert old.num_decoder_layers == old.num_layers and old.decoder_start_token_id == 0
  new = T5Config.from_dict({"tie_word_embeddings": True, "scale_decoder_outputs": False})
  assert new.tie_word_embeddings and not new.scale_decoder_outputs
  # mT5: transformers 5 never rescales (its configs always say tied); up to 4.x, iff tied.
  for version, tied, scaled in (("5.0.0", True, False), ("4.46.3", True, True),
                                ("4.46.3", False, False), (None, True, False)):
    d = {"model_type": "mt5", "tie_word_embeddings": tied, "transformers_version": version}
    assert T5Config.from_dict(d).scale_decoder_outputs == scaled, d
  assert T5Config.from_dict({"feed_forward_proj": "gated-gelu"}).activation == "gelu_new"
  with pytest.raises(ValueError, match="model_type"):
    T5Config.from_dict({"model_type": "bert"})
  with pytest.raises(ValueError, match="eos_token_id"):
    T5Config(vocab_size=10, eos_token_id=10)
  with pytest.raises(ValueError, match=r"relative_attention_max_distance > "
                                       r"relative_attention_num_buckets // 2; got 32 and 16"):
    T5Config(relative_attention_num_buckets=32, relative_attention_max_distance=16)
  roundtrip = transformers.T5Config(**T5Config.byt5_small_scratch().to_dict())
  assert roundtrip.vocab_size == 384 and roundtrip.is_gated_act


def test_scale_decoder_outputs_as_transformers_reads_configs():
  """Original T5 configs (model_type t5, older hub files without transformers_version) scale iff
  tied; an explicit flag wins; the constructor's default follows the tying."""
  for d in ({"model_type": "t5"}, {}, {"model_type": "t5", "tie_word_embeddings": False},
            {"model_type": "t5", "transformers_version": "4.40.0"},
            {"model_type": "t5", "transformers_version": "5.0.0", "tie_word_embeddings": True},
            {"tie_word_embeddings": True, "scale_decoder_outputs": False},
            {"tie_word_embeddings": False, "scale_decoder_outputs": True}):
    assert (T5Config.from_dict(d).scale_decoder_outputs
            == transformers.T5Config.from_dict(d).scale_decoder_outputs), d
  for kw in ({}, {"tie_word_embeddings": True}, {"tie_word_embeddings": False}):
    assert T5Config(**kw).scale_decoder_outputs == transformers.T5Config(**kw).scale_decoder_outputs


def test_generation_config_pad_token_id_is_used(relu_tied, tmp_path):
  shutil.copytree(relu_tied.path, tmp_path / "ckpt")
  gen_path = tmp_path / "ckpt" / "generation_config.json"
  gen_path.write_text(json.dumps({**json.loads(gen_path.read_text()), "pad_token_id": 5}))
  config, _ = load_t5(tmp_path / "ckpt")
  hf_generation = transformers.GenerationConfig.from_pretrained(tmp_path / "ckpt")
  assert config.pad_token_id == hf_generation.pad_token_id == 5
  assert load_t5(relu_tied.path)[0].pad_token_id == 0


def test_generation_config_options_generate_lacks_are_named(relu_tied, tmp_path, caplog):
  """transformers' generate applies generation_config.json's no_repeat_ngram_size,
  repetition_penalty, early_stopping, ... by default; `generate` here has no such options, and
  loading said nothing of them (its outputs silently differed from transformers')."""
  import logging
  shutil.copytree(relu_tied.path, tmp_path / "ckpt")
  gen_path = tmp_path / "ckpt" / "generation_config.json"
  ids = json.loads(gen_path.read_text())
  gen_path.write_text(json.dumps({**ids, "no_repeat_ngram_size": 3, "repetition_penalty": 1.2,
                                  "early_stopping": True}))
  hf_generation = transformers.GenerationConfig.from_pretrained(tmp_path / "ckpt")
  assert (hf_generation.no_repeat_ngram_size, hf_generation.repetition_penalty,
          hf_generation.early_stopping) == (3, 1.2, True)
  with caplog.at_level(logging.WARNING):
    load_t5(tmp_path / "ckpt")
  assert "early_stopping=True, no_repeat_ngram_size=3, repetition_penalty=1.2" in caplog.text
  assert str(gen_path) in caplog.text
  caplog.clear()  # their defaults, spelled out or null, are not named
  gen_path.write_text(json.dumps({**ids, "no_repeat_ngram_size": 0, "repetition_penalty": 1.0,
                                  "early_stopping": False, "bad_words_ids": None}))
  with caplog.at_level(logging.WARNING):
    load_t5(tmp_path / "ckpt")
  assert "generation_config.json" not in caplog.text


def test_encoder_only_load_does_not_name_decoding_options(relu_tied, tmp_path, caplog):
  """An encoder-only load (train.py's text.checkpoint, --encode_out) warned of generation_config's
  decoding options, advising to 'pass them to `generate`', which it cannot; and refused to encode
  for a bad token id there."""
  import logging
  shutil.copytree(relu_tied.path, tmp_path / "ckpt")
  gen_path = tmp_path / "ckpt" / "generation_config.json"
  gen_path.write_text(json.dumps({**json.loads(gen_path.read_text()), "num_beams": 4,
                                  "no_repeat_ngram_size": 3}))
  with caplog.at_level(logging.WARNING):
    config, params = load_t5(tmp_path / "ckpt", encoder_only=True)
  assert not caplog.text and set(params) == {"shared", "encoder"}
  with caplog.at_level(logging.WARNING):  # loaded to generate, they are named
    load_t5(tmp_path / "ckpt")
  assert "num_beams=4" in caplog.text and "no_repeat_ngram_size=3" in caplog.text
  gen_path.write_text(json.dumps({"eos_token_id": 10**6}))
  assert load_t5(tmp_path / "ckpt", encoder_only=True)[0] == config
  with pytest.raises(ValueError, match="Invalid token id in .*generation_config.json"):
    load_t5(tmp_path / "ckpt")


def test_decoding_options_of_config_json_are_named_without_generation_config(relu_tied, tmp_path,
                                                                            caplog):
  """Without generation_config.json (a checkpoint saved before it existed) transformers' generate
  takes num_beams, no_repeat_ngram_size, ... from config.json; loading said nothing of them."""
  import logging
  shutil.copytree(relu_tied.path, tmp_path / "ckpt")
  (tmp_path / "ckpt" / "generation_config.json").unlink()
  cfg_path = tmp_path / "ckpt" / "config.json"
  cfg = json.loads(cfg_path.read_text())
  with caplog.at_level(logging.WARNING):  # config.json of decoding options as transformers' own
    load_t5(tmp_path / "ckpt")
  assert "config.json" not in caplog.text
  cfg_path.write_text(json.dumps({**cfg, "num_beams": 4, "no_repeat_ngram_size": 3}))
  hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ckpt")
  assert (hf.generation_config.num_beams, hf.generation_config.no_repeat_ngram_size) == (4, 3)
  with caplog.at_level(logging.WARNING):
    load_t5(tmp_path / "ckpt")
  assert f"{cfg_path} sets decoding defaults (num_beams=4)" in caplog.text
  assert f"{cfg_path} sets decoding options (no_repeat_ngram_size=3)" in caplog.text


def test_generation_config_of_every_option_unset_names_none(relu_tied, tmp_path, caplog):
  """GenerationConfig.to_json_file(path, use_diff=False) writes every option, the unset ones as
  null (transformers 5's default of each): loading warned that the file sets decoding defaults
  'do_sample=None, length_penalty=None, max_length=None, ...' that transformers would apply."""
  import logging
  shutil.copytree(relu_tied.path, tmp_path / "ckpt")
  gen_path = tmp_path / "ckpt" / "generation_config.json"
  transformers.GenerationConfig.from_pretrained(tmp_path / "ckpt").to_json_file(gen_path,
                                                                               use_diff=False)
  assert json.loads(gen_path.read_text())["num_beams"] is None
  with caplog.at_level(logging.WARNING):
    load_t5(tmp_path / "ckpt")
  assert "generation_config.json" not in caplog.text
  gen_path.write_text(json.dumps({**json.loads(gen_path.read_text()), "num_beams": 4}))
  with caplog.at_level(logging.WARNING):  # one that is set is still named, alone
    load_t5(tmp_path / "ckpt")
  assert "sets decoding defaults (num_beams=4) that llmimg_jax does not apply" in caplog.text


@pytest.mark.parametrize("safe", [True, False])
def test_hub_name_of_sharded_variant_weights_only_loads(safe, relu_tied, tmp_path, monkeypatch):
  """A hub repo of save_pretrained(DIR, variant="fp16") shards alone: the downloads fetched the
  shards but not their index (model.safetensors.index.fp16.json, pytorch_model.bin.index.fp16.json),
  and loading said 'No T5 weights'."""
  import huggingface_hub
  from huggingface_hub.utils import filter_repo_objects
  repo = tmp_path / "repo"
  shutil.copytree(relu_tied.path, repo)
  os.remove(repo / "model.safetensors")
  if safe:
    relu_tied.hf_model.save_pretrained(repo, variant="fp16", max_shard_size="40KB")
    assert "model.safetensors.index.fp16.json" in os.listdir(repo)
  else:  # as transformers 4 named them
    state = relu_tied.hf_model.state_dict()
    shards = {f"pytorch_model.fp16-0000{i + 1}-of-00002.bin": sorted(state)[i::2] for i in (0, 1)}
    for file, keys in shards.items():
      torch.save({k: state[k].half() for k in keys}, repo / file)
    (repo / "pytorch_model.bin.index.fp16.json").write_text(json.dumps(
        {"weight_map": {k: file for file, keys in shards.items() for k in keys}}))
  snapshot = tmp_path / "snapshot"  # one snapshot folder, as huggingface_hub's cache keeps

  def snapshot_download(name, allow_patterns):
    for f in filter_repo_objects(os.listdir(repo), allow_patterns=allow_patterns):
      shutil.copytree(repo, snapshot, dirs_exist_ok=True, ignore=lambda d, names: [
          n for n in names if n != f])
    snapshot.mkdir(exist_ok=True)
    return str(snapshot)
  monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
  config, params = load_t5("org/t5-fp16")
  reference = load_t5(relu_tied.path)
  assert config == reference[0]
  if not safe:  # the shards hold fp16 weights
    reference = load_t5(repo)
  _assert_same_params(params, reference[1])


@pytest.mark.parametrize("weights",
                         ["model.safetensors", "pytorch_model.bin", "flax_model.msgpack"])
def test_hub_name_fetches_pytorch_weights_only_where_there_are_no_safetensors(
    weights, tmp_path, monkeypatch):
  """Older hub repos hold only pytorch_model*.bin: a second download asks for those; repos of
  transformers 4.x's Flax T5 only flax_model*.msgpack: a third asks for those."""
  import huggingface_hub
  calls = []
  last = {"model.safetensors": 1, "pytorch_model.bin": 2, "flax_model.msgpack": 3}[weights]

  def snapshot_download(name, allow_patterns):
    calls.append(allow_patterns)
    folder = tmp_path / f"snapshot{len(calls)}"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    if len(calls) == last:
      (folder / weights).write_bytes(b"")
    return str(folder)
  monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
  from llmimg_jax.text.loading import resolve_checkpoint_dir
  local = resolve_checkpoint_dir("google/t5-old")
  assert "*.safetensors" in calls[0] and "pytorch_model*.bin" not in calls[0]
  assert len(calls) == last and local == str(tmp_path / f"snapshot{last}")
  assert all("flax_model*.msgpack" not in c for c in calls[:2])
  if last >= 2:
    assert "pytorch_model*.bin" in calls[1]
  if last == 3:
    assert set(calls[2]) == {"flax_model*.msgpack", "flax_model.msgpack.index.json"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_convert_state_dict_takes_a_torch_model_s_state_dict(relu_tied, dtype):
  """convert_state_dict(hf_model.state_dict(), config), as its docstring's 'HF PyTorch T5 state
  dict' reads, returned params holding torch tensors, which generate's jax.jit refused."""
  from llmimg_jax.text import convert_state_dict, generate
  config, params = load_t5(relu_tied.path)
  model = copy.deepcopy(relu_tied.hf_model).to(dtype)
  _, got = convert_state_dict(model.state_dict(), config)
  assert all(type(x) is np.ndarray and x.dtype == np.float32 for x in jax.tree.leaves(got))
  if dtype == torch.float32:
    _assert_same_params(got, params)
  ids = np.array([[5, 6, 7, 1]], np.int32)
  assert generate(got, config, ids, max_new_tokens=3).shape == (1, 3)
