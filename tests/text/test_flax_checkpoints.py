"""Checkpoints of transformers 4.x's Flax T5 (flax_model.msgpack, or its model.safetensors of Flax
names) against that T5's own outputs.

The folders under data/ were saved, and reference.npz recorded, by transformers 4.46.3's
FlaxT5ForConditionalGeneration / FlaxT5EncoderModel (data/make_flax_fixtures.py); transformers 5
has no Flax models to compare with here.
"""
from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization, traverse_util

from llmimg_jax.text import T5EncoderModel, T5ForConditionalGeneration, load_t5
from llmimg_jax.text.config import T5Config
from llmimg_jax.text.flax_weights import read_msgpack
from llmimg_jax.text.loading import convert_state_dict, read_state_dict
from tests.text.utils import copy_config

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
TOL = 1e-5  # fp32 max abs diff vs transformers' Flax T5
MSGPACK = "flax_model.msgpack"
# Fixture folder -> the folder whose reference.npz holds its model's outputs.
ENCODER_DECODERS = {"flax_t5_relu_tied": "flax_t5_relu_tied",
                    "flax_t5_gated_untied": "flax_t5_gated_untied",
                    "flax_t5_gated_sharded": "flax_t5_gated_untied",
                    "flax_t5_gated_safetensors": "flax_t5_gated_untied"}


def _reference(name: str) -> dict[str, np.ndarray]:
  with np.load(os.path.join(DATA, name, "reference.npz")) as f:
    return dict(f)


def _encode(config, params, ref) -> np.ndarray:
  enc_params = {k: params[k] for k in ("shared", "encoder")}
  return np.asarray(T5EncoderModel(config).apply({"params": enc_params}, ref["input_ids"],
                                                  ref["attention_mask"]))


def _assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _restore(path: str):
  with open(path, "rb") as f:
    return serialization.msgpack_restore(f.read())


def _write(tree, path) -> None:
  with open(path, "wb") as f:  # as transformers' save_pretrained wrote it: flax.serialization
    f.write(serialization.msgpack_serialize(tree))


@pytest.mark.parametrize("name", ENCODER_DECODERS)
def test_flax_checkpoint_matches_transformers_flax_t5(name):
  path = os.path.join(DATA, name)
  assert {MSGPACK, f"{MSGPACK}.index.json", "model.safetensors"} & set(os.listdir(path))
  ref = _reference(ENCODER_DECODERS[name])
  config, params = load_t5(path)
  untied = "untied" in ENCODER_DECODERS[name]
  assert config.tie_word_embeddings != untied and config.scale_decoder_outputs != untied
  assert ("lm_head" in params) == untied and config.is_gated == untied
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))

  np.testing.assert_allclose(_encode(config, params, ref), ref["encoder_last_hidden_state"],
                             atol=TOL, rtol=0)
  logits = T5ForConditionalGeneration(config).apply(
      {"params": params}, ref["input_ids"], ref["attention_mask"], ref["decoder_input_ids"])
  np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=TOL, rtol=0)
  assert np.abs(ref["logits"]).max() > 1.0  # not a trivially flat comparison


def test_sharded_flax_checkpoint_loads_as_the_single_file():
  files = os.listdir(os.path.join(DATA, "flax_t5_gated_sharded"))
  assert MSGPACK not in files and len([f for f in files if f.endswith(".msgpack")]) > 2
  single = load_t5(os.path.join(DATA, "flax_t5_gated_untied"))
  sharded = load_t5(os.path.join(DATA, "flax_t5_gated_sharded"))
  assert sharded[0] == single[0]
  _assert_same_params(sharded[1], single[1])


def test_flax_safetensors_checkpoint_loads_as_the_msgpack():
  # transformers 4.x's FlaxT5.save_pretrained(DIR, safe_serialization=True): Flax names, '.'-joined,
  # and Flax's layout ([in, out] kernels), marked by the metadata transformers reads them by.
  from safetensors import safe_open
  path = os.path.join(DATA, "flax_t5_gated_safetensors")
  assert not any(f.endswith(".msgpack") for f in os.listdir(path))
  with safe_open(os.path.join(path, "model.safetensors"), framework="np") as f:
    assert f.metadata() == {"format": "flax"} and "lm_head.kernel" in f.keys()
  msgpack = os.path.join(DATA, "flax_t5_gated_untied")
  state, reference = read_state_dict(path), read_state_dict(msgpack)
  assert state.keys() == reference.keys()
  for key in state:
    np.testing.assert_array_equal(state[key], reference[key])
  single, loaded = load_t5(msgpack), load_t5(path)
  assert loaded[0] == single[0]
  _assert_same_params(loaded[1], single[1])


def test_flax_encoder_only_checkpoint():
  path = os.path.join(DATA, "flax_t5_encoder")
  ref = _reference("flax_t5_encoder")
  config, params = load_t5(path, encoder_only=True)
  assert set(params) == {"shared", "encoder"}
  np.testing.assert_allclose(_encode(config, params, ref), ref["encoder_last_hidden_state"],
                             atol=TOL, rtol=0)
  # Untied, like FLAN-T5's encoders: lm_head.weight is missing as well as the decoder.
  with pytest.raises(ValueError, match="lack 'lm_head.weight' \\(an encoder-only checkpoint.*"
                                       "load it with encoder_only=True") as e:
    load_t5(path)
  assert path in str(e.value)


def test_flax_state_dict_has_pytorch_names_and_layout():
  state = read_state_dict(os.path.join(DATA, "flax_t5_gated_untied"))
  tree = _restore(os.path.join(DATA, "flax_t5_gated_untied", MSGPACK))
  assert len(state) == len(traverse_util.flatten_dict(tree))
  np.testing.assert_array_equal(state["shared.weight"], tree["shared"]["embedding"])
  np.testing.assert_array_equal(state["lm_head.weight"], tree["lm_head"]["kernel"].T)
  wi = tree["encoder"]["block"]["0"]["layer"]["1"]["DenseReluDense"]["wi_0"]["kernel"]
  np.testing.assert_array_equal(state["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"], wi.T)
  bias = tree["decoder"]["block"]["0"]["layer"]["0"]["SelfAttention"]["relative_attention_bias"]
  np.testing.assert_array_equal(
      state["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
      bias["embedding"])
  np.testing.assert_array_equal(state["decoder.block.1.layer.2.layer_norm.weight"],
                                tree["decoder"]["block"]["1"]["layer"]["2"]["layer_norm"]["weight"])
  assert all(v.dtype == np.float32 for v in state.values())


def test_convert_state_dict_takes_flax_params_as_their_file_holds_them():
  # from_flax=True: '/'-joined Flax params, [in, out] kernels and all, are renamed, not transposed
  # (read_state_dict's [out, in] Linear weights are the PyTorch form).
  src = os.path.join(DATA, "flax_t5_gated_untied")
  config = T5Config.from_json_file(os.path.join(src, "config.json"))
  flax = convert_state_dict(read_msgpack(os.path.join(src, MSGPACK)), config, from_flax=True)
  torch = convert_state_dict(read_state_dict(src), config)
  assert flax[0] == torch[0]
  _assert_same_params(flax[1], torch[1])


def test_flax_lm_head_equal_to_the_embedding_stays_tied(tmp_path):
  # A tied model's lm_head/kernel ([d_model, vocab]) saved beside shared/embedding ([vocab,
  # d_model]) is the embedding, transposed: the config stays tied (untied, logits are not scaled).
  src = os.path.join(DATA, "flax_t5_relu_tied")
  copy_config(src, tmp_path)
  tree = _restore(os.path.join(src, MSGPACK))
  _write({**tree, "lm_head": {"kernel": tree["shared"]["embedding"].T}}, tmp_path / MSGPACK)
  config, params = load_t5(tmp_path)
  reference = load_t5(src)
  assert config == reference[0] and config.tie_word_embeddings
  _assert_same_params(params, reference[1])


def test_bf16_flax_checkpoint_loads_as_its_weights_upcast(tmp_path):
  # FlaxT5.to_bf16(params) then save_pretrained(DIR, params=...) wrote bfloat16 arrays.
  src = os.path.join(DATA, "flax_t5_relu_tied")
  copy_config(src, tmp_path)
  tree = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _restore(os.path.join(src, MSGPACK)))
  _write(tree, tmp_path / MSGPACK)
  config, params = load_t5(tmp_path)
  _, fp32 = load_t5(src)
  _assert_same_params(params, jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32),
                                           fp32))
  assert config == load_t5(src)[0]


def test_flax_msgpack_under_a_params_key_loads(tmp_path):
  # flax.serialization.to_bytes({"params": params}) (model.init's variables, a training script's
  # save) wraps the T5's tree in one top-level 'params' key.
  src = os.path.join(DATA, "flax_t5_gated_untied")
  copy_config(src, tmp_path)
  tree = _restore(os.path.join(src, MSGPACK))
  (tmp_path / MSGPACK).write_bytes(serialization.to_bytes({"params": tree}))
  config, params = load_t5(tmp_path)
  reference = load_t5(src)
  assert config == reference[0]
  _assert_same_params(params, reference[1])
  assert read_state_dict(tmp_path).keys() == read_state_dict(src).keys()


def test_safetensors_and_pytorch_weights_are_preferred_to_flax(tmp_path):
  from safetensors.numpy import save_file
  src = os.path.join(DATA, "flax_t5_relu_tied")
  copy_config(src, tmp_path)
  save_file(read_state_dict(src), str(tmp_path / "model.safetensors"))
  (tmp_path / MSGPACK).write_bytes(b"not read")
  _assert_same_params(load_t5(tmp_path)[1], load_t5(src)[1])
  # tf_model.h5 beside it is not read, and no advice to convert it is given.
  only_flax = tmp_path / "flax"
  shutil.copytree(src, only_flax)
  (only_flax / "tf_model.h5").write_bytes(b"\x89HDF")
  _assert_same_params(load_t5(only_flax)[1], load_t5(src)[1])


@pytest.mark.parametrize("weights", ["flax msgpack", "flax safetensors", "pytorch safetensors"])
def test_shape_mismatch_is_named_as_the_file_holds_the_param(weights, tmp_path):
  # config.json's d_ff is 32, the weights' 16: the FFN kernels are named by the file's own names,
  # with its own shapes: Flax's [in, out] kernels, PyTorch's [out, in] Linear weights.
  src = os.path.join(DATA, "flax_t5_gated_untied")
  with open(os.path.join(src, "config.json")) as f:
    (tmp_path / "config.json").write_text(json.dumps({**json.load(f), "d_ff": 32}))
  if weights == "flax msgpack":
    shutil.copy(os.path.join(src, MSGPACK), tmp_path)
  elif weights == "flax safetensors":
    shutil.copy(os.path.join(DATA, "flax_t5_gated_safetensors", "model.safetensors"), tmp_path)
  else:
    from safetensors.numpy import save_file
    save_file(read_state_dict(src), str(tmp_path / "model.safetensors"))
  with pytest.raises(ValueError, match="does not match its T5 config.*shape mismatches") as e:
    load_t5(tmp_path)
  message = str(e.value)
  assert "missing params" not in message  # a param of the wrong shape is not missing too
  if weights.startswith("flax"):  # the msgpack's '/'-joined tree paths, the safetensors' own keys
    name = {"flax msgpack": "decoder/block/1/layer/2/DenseReluDense/{}/kernel",
            "flax safetensors": "decoder.block.1.layer.2.DenseReluDense.{}.kernel"}[weights]
    assert (f"{name.format('wi_1')}: checkpoint (8, 16) vs model (8, 32), "
            f"{name.format('wo')}: checkpoint (16, 8) vs model (32, 8)") in message
    assert "DenseReluDense.wi_1.weight" not in message and "wo.weight" not in message
  else:
    assert ("decoder.block.1.layer.2.DenseReluDense.wi_1.weight: checkpoint (16, 8) vs model "
            "(32, 8) (as decoder/block_1/layer_2/DenseReluDense/wi_1/kernel, transposed)"
            ) in message


@pytest.mark.parametrize("damage", ["truncated", "empty", "not msgpack"])
def test_damaged_flax_msgpack_names_the_file_and_the_fix(damage, tmp_path):
  src = os.path.join(DATA, "flax_t5_relu_tied")
  copy_config(src, tmp_path)
  with open(os.path.join(src, MSGPACK), "rb") as f:
    data = f.read()
  (tmp_path / MSGPACK).write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                                    "not msgpack": b"<html>404 Not Found</html>"}[damage])
  with pytest.raises(ValueError, match="Could not read Flax weights") as e:
    load_t5(tmp_path)
  message = str(e.value)
  assert str(tmp_path / MSGPACK) in message and "\n" not in message
  assert "truncated" in message and "save_pretrained" in message


@pytest.mark.parametrize("tree", [{}, {"shared": {"embedding": [1.0, 2.0]}, "step": 3}, [1, 2]])
def test_flax_msgpack_of_other_than_arrays_is_named(tree, tmp_path):
  src = os.path.join(DATA, "flax_t5_relu_tied")
  copy_config(src, tmp_path)
  _write(tree, tmp_path / MSGPACK)
  with pytest.raises(ValueError, match="not a Flax param tree of arrays") as e:
    load_t5(tmp_path)
  assert str(tmp_path / MSGPACK) in str(e.value)
  if isinstance(tree, dict) and tree:
    assert "shared/embedding (list)" in str(e.value) and "step (int)" in str(e.value)


@pytest.mark.parametrize("weights", ["flax msgpack", "flax safetensors"])
def test_flax_checkpoint_missing_a_param_is_named(weights, tmp_path):
  src = os.path.join(DATA, "flax_t5_gated_untied")
  copy_config(src, tmp_path)
  tree = _restore(os.path.join(src, MSGPACK))
  del tree["decoder"]["block"]["1"]["layer"]["1"]["EncDecAttention"]["v"]
  tree["encoder"]["extra"] = {"embedding": np.zeros((2, 3), np.float32)}
  if weights == "flax msgpack":
    _write(tree, tmp_path / MSGPACK)
  else:  # transformers 4.x's Flax save_pretrained(DIR, safe_serialization=True): '.'-joined
    from safetensors.numpy import save_file
    save_file(traverse_util.flatten_dict(tree, sep="."), str(tmp_path / "model.safetensors"),
              metadata={"format": "flax"})
  with pytest.raises(ValueError, match="does not match its T5 config") as e:
    load_t5(tmp_path)
  assert "missing params decoder/block_1/layer_1/EncDecAttention/v/kernel;" in str(e.value)
  # Named as the file holds it, not as the PyTorch key it was renamed to (encoder.extra.weight).
  extra = "encoder/extra/embedding" if weights == "flax msgpack" else "encoder.extra.embedding"
  assert f"unexpected checkpoint keys {extra}" in str(e.value)
  assert ".weight" not in str(e.value)


def test_flax_t5_under_another_key_is_named_as_the_file_holds_it(tmp_path):
  src = os.path.join(DATA, "flax_t5_relu_tied")
  copy_config(src, tmp_path)
  _write({"model": _restore(os.path.join(src, MSGPACK))}, tmp_path / MSGPACK)
  with pytest.raises(ValueError, match="its T5 weights are under 'model/'") as e:
    load_t5(tmp_path)
  assert "unexpected checkpoint keys model/decoder/block/0/layer/0/SelfAttention/k/kernel, " in (
      str(e.value))


def test_damaged_flax_shard_is_named(tmp_path):
  shutil.copytree(os.path.join(DATA, "flax_t5_gated_sharded"), tmp_path / "ckpt")
  shard = tmp_path / "ckpt" / "flax_model-00002-of-00004.msgpack"
  shard.write_bytes(shard.read_bytes()[:100])
  with pytest.raises(ValueError, match="Could not read Flax weights") as e:
    load_t5(tmp_path / "ckpt")
  assert str(shard) in str(e.value)
  shard.unlink()
  with pytest.raises(FileNotFoundError, match="Shard .*flax_model-00002-of-00004.msgpack listed"):
    load_t5(tmp_path / "ckpt")
