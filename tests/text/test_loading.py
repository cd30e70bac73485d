"""Checkpoint formats and loud, specific errors for broken checkpoints."""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from llmimg_jax.text import T5Config, TextGenerator, load_t5, load_tokenizer
from llmimg_jax.text.__main__ import main
from llmimg_jax.text.loading import read_state_dict


def _assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference(checkpoint):
  return load_t5(checkpoint.path)


def _copy_config(src: str, dst: str) -> None:
  os.makedirs(dst, exist_ok=True)
  shutil.copy(os.path.join(src, "config.json"), dst)


def test_sharded_safetensors_load_the_same(checkpoint, reference, tmp_path):
  checkpoint.hf_model.save_pretrained(tmp_path, max_shard_size="40KB")
  shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
  assert "model.safetensors.index.json" in os.listdir(tmp_path) and len(shards) > 2
  _copy_config(checkpoint.path, tmp_path)  # keep the exact tie/scale flags of the reference
  config, params = load_t5(tmp_path)
  assert config == reference[0]
  _assert_same_params(params, reference[1])


@pytest.mark.parametrize("shard", [False, True])
def test_variant_weights_load_the_same(shard, relu_tied, tmp_path):
  # save_pretrained(DIR, variant="fp16"), as diffusers ships T5 text encoders: model.fp16.safetensors
  # or model.safetensors.index.fp16.json and its shards were 'No T5 weights'.
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
  state["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = torch.randn(16, 4)
  torch.save(state, tmp_path / "pytorch_model.bin")
  _copy_config(checkpoint.path, tmp_path)
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
  _copy_config(checkpoint.path, tmp_path)
  config, params = load_t5(tmp_path)
  assert config == reference[0]
  _assert_same_params(params, reference[1])


def test_bf16_checkpoints_load_as_their_weights_upcast(relu_tied, tmp_path):
  """A model saved in bfloat16, as safetensors and as a PyTorch pickle, loads to fp32 params equal
  to the fp32 checkpoint's rounded to bf16."""
  hf_bf16 = copy.deepcopy(relu_tied.hf_model).to(torch.bfloat16)
  hf_bf16.save_pretrained(tmp_path / "safetensors")
  _copy_config(relu_tied.path, tmp_path / "bin")
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


def test_load_t5_casts_every_param_to_dtype(relu_tied):
  _, params = load_t5(relu_tied.path)
  _, low = load_t5(relu_tied.path, jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(low)} == {jnp.dtype(jnp.bfloat16)}
  _assert_same_params(low, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))


def test_shard_index_naming_a_missing_shard_or_tensor_is_refused(relu_tied, tmp_path):
  relu_tied.hf_model.save_pretrained(tmp_path, max_shard_size="40KB")
  index_path = tmp_path / "model.safetensors.index.json"
  index = json.loads(index_path.read_text())
  shard = sorted(set(index["weight_map"].values()))[1]
  os.rename(tmp_path / shard, tmp_path / "moved")
  with pytest.raises(FileNotFoundError, match="listed in .*index.json is missing") as e:
    load_t5(tmp_path)
  assert str(tmp_path / shard) in str(e.value)
  os.rename(tmp_path / "moved", tmp_path / shard)
  index["weight_map"]["decoder.block.0.layer.0.SelfAttention.extra.weight"] = shard
  index_path.write_text(json.dumps(index))
  with pytest.raises(ValueError, match=r"absent from their shards: "
                                       r"\['decoder.block.0.layer.0.SelfAttention.extra.weight'\]"):
    load_t5(tmp_path)


@pytest.mark.parametrize("weight_map", [[], ["model-00001.safetensors"], {"shared.weight": None}])
def test_shard_index_whose_weight_map_is_not_names_to_files_is_refused(weight_map, relu_tied,
                                                                       tmp_path):
  _copy_config(relu_tied.path, tmp_path)
  index_path = tmp_path / "model.safetensors.index.json"
  index_path.write_text(json.dumps({"weight_map": weight_map}))
  with pytest.raises(ValueError, match="Malformed shard index .*'weight_map' object") as e:
    load_t5(tmp_path)
  assert str(index_path) in str(e.value)


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
  _copy_config(checkpoint.path, tmp_path)
  config, params = load_t5(tmp_path)
  assert config == reference[0]
  _assert_same_params(params, reference[1])


def test_pytorch_bin_without_torch_says_what_to_do(relu_tied, tmp_path, monkeypatch):
  torch.save(relu_tied.hf_model.state_dict(), tmp_path / "pytorch_model.bin")
  _copy_config(relu_tied.path, tmp_path)
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  with pytest.raises(ImportError, match="torch is not installed") as e:
    load_t5(tmp_path)
  assert "pytorch_model.bin" in str(e.value) and "safetensors" in str(e.value)


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
  assert "decoder/block_0" in str(e.value) and " more]" not in str(e.value)
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


def test_checkpoint_of_another_t5_class_is_named(tmp_path):
  torch.manual_seed(0)
  transformers.T5ForSequenceClassification(transformers.T5Config(
      vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)).save_pretrained(tmp_path)
  with pytest.raises(ValueError, match="its T5 weights are under 'transformer.': a checkpoint of "
                                       "another T5 class") as e:
    load_t5(tmp_path)
  assert " more]" not in str(e.value) and "more" in str(e.value) and len(str(e.value)) < 2000


def test_missing_directory(tmp_path):
  missing = tmp_path / "no_such_ckpt"
  with pytest.raises(FileNotFoundError, match="not found") as e:
    load_t5(missing)
  assert str(missing) in str(e.value)


def test_file_instead_of_directory(relu_tied):
  path = os.path.join(relu_tied.path, "config.json")
  with pytest.raises(NotADirectoryError, match="config.json"):
    load_t5(path)


def test_missing_config_json(relu_tied, tmp_path):
  shutil.copy(os.path.join(relu_tied.path, "model.safetensors"), tmp_path)
  with pytest.raises(FileNotFoundError, match="config.json") as e:
    load_t5(tmp_path)
  assert str(tmp_path) in str(e.value)


@pytest.mark.parametrize("content", [b'{"d_model": 32,', b'\xff\xfe{"d_model": 32}'])
def test_malformed_config_json(content, relu_tied, tmp_path):
  # Bytes that are not UTF-8 raised UnicodeDecodeError without the file's name.
  shutil.copy(os.path.join(relu_tied.path, "model.safetensors"), tmp_path)
  (tmp_path / "config.json").write_bytes(content)
  with pytest.raises(ValueError, match="Malformed JSON") as e:
    load_t5(tmp_path)
  assert str(tmp_path / "config.json") in str(e.value)


def test_malformed_generation_config_json(relu_tied, tmp_path):
  shutil.copytree(relu_tied.path, tmp_path / "ckpt")
  (tmp_path / "ckpt" / "generation_config.json").write_text("[0, 1]")
  with pytest.raises(ValueError, match="Could not read .*generation_config.json .*expected a JSON "
                                       "object.*delete it"):
    load_t5(tmp_path / "ckpt")


@pytest.mark.parametrize("eos", ['"x"', "99999", "{}"])
def test_bad_token_id_in_generation_config_json_names_the_file(eos, relu_tied, tmp_path):
  # int()'s or T5Config's message alone ('invalid literal for int()', 'outside the vocabulary').
  shutil.copytree(relu_tied.path, tmp_path / "ckpt")
  (tmp_path / "ckpt" / "generation_config.json").write_text(f'{{"eos_token_id": {eos}}}')
  with pytest.raises(ValueError, match="Invalid token id in .*generation_config.json.*delete it"):
    load_t5(tmp_path / "ckpt")


def test_missing_weights(relu_tied, tmp_path):
  _copy_config(relu_tied.path, tmp_path)
  with pytest.raises(FileNotFoundError, match="No T5 weights") as e:
    load_t5(tmp_path)
  assert str(tmp_path) in str(e.value) and "model.safetensors" in str(e.value)
  assert "config.json" in str(e.value)  # lists what it did find


@pytest.mark.parametrize("file,option", [("flax_model.msgpack", "from_flax"),
                                         ("tf_model.h5", "from_tf")])
def test_weights_of_transformers_flax_or_tf_t5_say_how_to_convert(file, option, relu_tied,
                                                                 tmp_path):
  # A model saved by transformers 4.x's FlaxT5ForConditionalGeneration: 'Save them with
  # model.save_pretrained(DIR)' was all the advice.
  _copy_config(relu_tied.path, tmp_path)
  (tmp_path / file).write_bytes(b"\x80")
  with pytest.raises(FileNotFoundError, match="No T5 weights") as e:
    load_t5(tmp_path)
  assert f"{file} is not read here" in str(e.value)
  assert f"from_pretrained(DIR, {option}=True).save_pretrained(DIR)" in str(e.value)


def test_truncated_safetensors(relu_tied, tmp_path):
  _copy_config(relu_tied.path, tmp_path)
  data = open(os.path.join(relu_tied.path, "model.safetensors"), "rb").read()
  (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="safetensors") as e:
    load_t5(tmp_path)
  assert str(tmp_path / "model.safetensors") in str(e.value)


_LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize 242041896\n".format(
    "0" * 64)


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_git_lfs_pointer_weights_say_to_fetch_them(weights, relu_tied, tmp_path):
  # A hub repository cloned without Git LFS: 'header too large ... truncated?' or torch's advice
  # to load with weights_only=False used to be all the user saw.
  _copy_config(relu_tied.path, tmp_path)
  (tmp_path / weights).write_text(_LFS_POINTER)
  with pytest.raises(ValueError, match="Git LFS pointer.*git lfs pull") as e:
    load_t5(tmp_path)
  assert str(tmp_path / weights) in str(e.value)


@pytest.mark.parametrize("vocab", ["tokenizer.json", "spiece.model"])
def test_git_lfs_pointer_vocabulary_says_to_fetch_it(vocab, tmp_path):
  # spiece.model as a pointer made transformers ask for `pip install tiktoken`.
  (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "T5Tokenizer"}')
  (tmp_path / vocab).write_text(_LFS_POINTER)
  with pytest.raises(ValueError, match="Git LFS pointer.*git lfs pull") as e:
    load_tokenizer(str(tmp_path), 8)
  assert str(tmp_path / vocab) in str(e.value) and "tiktoken" not in str(e.value)


def test_missing_unexpected_and_misshaped_tensors_are_named(relu_tied, tmp_path):
  from safetensors.numpy import save_file
  state = read_state_dict(relu_tied.path)
  del state["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
  state["encoder.block.7.layer.0.SelfAttention.q.weight"] = np.zeros((32, 32), np.float32)
  state["decoder.final_layer_norm.weight"] = np.ones((31,), np.float32)
  save_file(state, str(tmp_path / "model.safetensors"))
  _copy_config(relu_tied.path, tmp_path)
  with pytest.raises(ValueError) as e:
    load_t5(tmp_path)
  msg = str(e.value)
  assert str(tmp_path) in msg
  assert "encoder/block_1/layer_1/DenseReluDense/wo/kernel" in msg  # missing
  assert "encoder.block.7.layer.0.SelfAttention.q.weight" in msg  # unexpected
  assert "decoder.final_layer_norm.weight: checkpoint (31,) vs model (32,)" in msg


def test_unknown_feed_forward_proj(relu_tied, tmp_path):
  with pytest.raises(ValueError, match="'gated-foo'"):
    T5Config.from_dict({"feed_forward_proj": "gated-foo"})
  shutil.copy(os.path.join(relu_tied.path, "model.safetensors"), tmp_path)
  cfg = json.loads(open(os.path.join(relu_tied.path, "config.json")).read())
  cfg["feed_forward_proj"] = "swiglu-ish"
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match="feed_forward_proj") as e:
    load_t5(tmp_path)
  assert str(tmp_path / "config.json") in str(e.value)


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


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_hub_name_fetches_pytorch_weights_only_where_there_are_no_safetensors(
    weights, tmp_path, monkeypatch):
  """Older hub repos hold only pytorch_model*.bin: a second download asks for those."""
  import huggingface_hub
  calls = []

  def snapshot_download(name, allow_patterns):
    calls.append(allow_patterns)
    folder = tmp_path / f"snapshot{len(calls)}"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    if weights == "model.safetensors" or len(calls) == 2:
      (folder / weights).write_bytes(b"")
    return str(folder)
  monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
  from llmimg_jax.text.loading import resolve_checkpoint_dir
  local = resolve_checkpoint_dir("google/t5-old")
  assert "*.safetensors" in calls[0] and "pytorch_model*.bin" not in calls[0]
  if weights == "model.safetensors":
    assert len(calls) == 1 and local == str(tmp_path / "snapshot1")
  else:
    assert len(calls) == 2 and "pytorch_model*.bin" in calls[1]
    assert local == str(tmp_path / "snapshot2")


class _Touch:
  """Unpickling this calls Path.touch: code that a weights-only load must not run."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (type(self.path).touch, (self.path,))


def test_a_pickle_that_runs_code_is_refused_not_run(relu_tied, tmp_path):
  marker = tmp_path / "ran"
  _copy_config(relu_tied.path, tmp_path)
  torch.save({"shared.weight": torch.zeros(2, 2), "payload": _Touch(marker)},
             tmp_path / "pytorch_model.bin")
  with pytest.raises(ValueError, match="Could not read PyTorch weights .*pytorch_model.bin") as e:
    load_t5(tmp_path)
  assert not marker.exists()
  assert "weights_only=False).save_pretrained(DIR)" in str(e.value)  # what to do if trusted


@pytest.mark.parametrize("content", ["empty", "garbage", "cut"])
def test_unreadable_pytorch_bin_is_one_line_naming_the_fix(content, relu_tied, tmp_path):
  # torch's own message: several paragraphs advising torch.load(weights_only=False), which this
  # loader never does; for an empty file, nothing ('Could not read PyTorch weights X: .').
  _copy_config(relu_tied.path, tmp_path)
  torch.save(relu_tied.hf_model.state_dict(), tmp_path / "whole.bin")
  data = {"empty": b"", "garbage": bytes(range(7, 256)) * 8,
          "cut": (tmp_path / "whole.bin").read_bytes()[:5000]}[content]
  (tmp_path / "pytorch_model.bin").write_bytes(data)
  with pytest.raises(ValueError) as e:
    load_t5(tmp_path)
  msg = str(e.value)
  assert msg.startswith(f"Could not read PyTorch weights {tmp_path / 'pytorch_model.bin'} (")
  assert "\n" not in msg and "\x1b" not in msg and "Re-download it" in msg
  assert "Re-running `torch.load`" not in msg and "()" not in msg


@pytest.mark.parametrize("wrap", ["nested", "extra", "list"])
def test_pytorch_bin_of_more_than_tensors_is_named(wrap, relu_tied, tmp_path):
  # A training checkpoint torch.load(weights_only=True) reads: it raised AttributeError ('dict'
  # object has no attribute 'detach').
  _copy_config(relu_tied.path, tmp_path)
  state = relu_tied.hf_model.state_dict()
  obj = {"nested": {"state_dict": dict(state)}, "extra": {**state, "epoch": 3}, "list": [state]}[wrap]
  torch.save(obj, tmp_path / "pytorch_model.bin")
  with pytest.raises(ValueError, match="not a state dict of tensors.*model.save_pretrained") as e:
    load_t5(tmp_path)
  assert str(tmp_path / "pytorch_model.bin") in str(e.value)
  assert {"nested": "state_dict (dict)", "extra": "epoch (int)", "list": "a list"}[wrap] in str(
      e.value)


def test_unreachable_hub_name(monkeypatch):
  import huggingface_hub

  def offline(*a, **kw):  # as huggingface_hub words it: over two lines
    raise OSError("Got: ConnectError: no network\nAn error happened while trying to locate the "
                  "files on the Hub.")
  monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
  with pytest.raises(FileNotFoundError, match="could not be fetched") as e:
    load_t5("google/flan-t5-small")
  assert "'google/flan-t5-small'" in str(e.value) and "no network An error" in str(e.value)
  assert "\n" not in str(e.value)  # one line on the command line
