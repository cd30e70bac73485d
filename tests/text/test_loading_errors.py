"""Broken or foreign T5 checkpoints: each is one error naming the file and the fix."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from llmimg_jax.text import T5Config, load_t5, load_tokenizer
from llmimg_jax.text.loading import read_state_dict
from llmimg_jax.text.weight_files import torch_load_detail
from tests.text.utils import copy_config


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
  copy_config(relu_tied.path, tmp_path)
  index_path = tmp_path / "model.safetensors.index.json"
  index_path.write_text(json.dumps({"weight_map": weight_map}))
  with pytest.raises(ValueError, match="Malformed shard index .*'weight_map' object") as e:
    load_t5(tmp_path)
  assert str(index_path) in str(e.value)

def test_pytorch_bin_without_torch_says_what_to_do(relu_tied, tmp_path, monkeypatch):
  torch.save(relu_tied.hf_model.state_dict(), tmp_path / "pytorch_model.bin")
  copy_config(relu_tied.path, tmp_path)
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  with pytest.raises(ImportError, match="torch is not installed") as e:
    load_t5(tmp_path)
  assert "pytorch_model.bin" in str(e.value) and "safetensors" in str(e.value)

def test_untied_encoder_only_checkpoint_says_to_load_it_encoder_only(gated_untied, tmp_path):
  # FLAN-T5's encoder saved by T5EncoderModel: 'the weights lack lm_head.weight' was all it said.
  from safetensors.numpy import save_file
  state = read_state_dict(gated_untied.path)
  save_file({k: v for k, v in state.items() if not k.startswith(("decoder.", "lm_head."))},
            str(tmp_path / "model.safetensors"))
  copy_config(gated_untied.path, tmp_path)
  with pytest.raises(ValueError, match="lack 'lm_head.weight' \\(an encoder-only checkpoint.*"
                                       "load it with encoder_only=True"):
    load_t5(tmp_path)
  assert set(load_t5(tmp_path, encoder_only=True)[1]) == {"shared", "encoder"}

_READ = """import sys
from llmimg_jax.text import load_tokenizer
from llmimg_jax.text.weight_files import read_safetensors
for read, path in ((read_safetensors, sys.argv[1]), (lambda p: load_tokenizer(p, 8), sys.argv[2])):
  try:
    read(path)
  except Exception as e:
    print(type(e).__name__, e)
"""


def test_files_this_user_may_not_read_are_not_called_missing_or_truncated(tmp_path):
  """safetensors reports any file it cannot open as "No such file or directory", which we
  followed with "Is it truncated? Re-save the checkpoint"; the tokenizer's error came with "save
  them with tokenizer.save_pretrained(DIR)". Now Python's PermissionError, naming the file."""
  from safetensors.numpy import save_file
  from tests.train.cli_utils import as_modes_hold, env
  weights = tmp_path / "model.safetensors"
  save_file({"shared.weight": np.zeros((2, 2), np.float32)}, str(weights))
  transformers.ByT5Tokenizer().save_pretrained(tmp_path)
  tokenizer_config = tmp_path / "tokenizer_config.json"
  for path in (weights, tokenizer_config):
    path.chmod(0)
  proc = subprocess.run([*as_modes_hold(), sys.executable, "-c", _READ, str(weights),
                         str(tmp_path)], capture_output=True, text=True, env=env())
  assert proc.stdout == "".join(f"PermissionError [Errno 13] Permission denied: '{path}'\n"
                                for path in (weights, tokenizer_config)), proc.stderr

def test_checkpoint_of_another_t5_class_is_named(tmp_path):
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                 num_heads=4)
  transformers.T5ForSequenceClassification(config).save_pretrained(tmp_path)
  with pytest.raises(ValueError, match="its T5 weights are under 'transformer.': a checkpoint of "
                                       "another T5 class") as e:
    load_t5(tmp_path)
  assert "['" not in str(e.value) and " more" in str(e.value) and len(str(e.value)) < 2000

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
  copy_config(relu_tied.path, tmp_path)
  with pytest.raises(FileNotFoundError, match="No T5 weights") as e:
    load_t5(tmp_path)
  assert str(tmp_path) in str(e.value) and "model.safetensors" in str(e.value)
  assert "config.json" in str(e.value)  # lists what it did find


def test_a_training_run_is_named_as_one(tmp_path):
  """--model runs/quick (or config.text.checkpoint of an earlier run) said 'Save them with
  model.save_pretrained(DIR)': a run's T5 is in its Orbax checkpoints, which this loader does not
  read."""
  (tmp_path / "checkpoints" / "2").mkdir(parents=True)
  (tmp_path / "config.json").write_text("{}")  # the run's config, not a T5's
  with pytest.raises(FileNotFoundError, match="No T5 weights") as e:
    load_t5(tmp_path)
  assert str(e.value).endswith(
      f"{tmp_path} is a train.py run: its text encoder is in its checkpoints/, which sample.py "
      "and evaluate.py read (from Python: Sampler.from_workdir(DIR).models.text_encoder with its "
      "text_params); this loader reads a Hugging Face T5's folder.")


def test_weights_of_transformers_tf_t5_say_how_to_convert(relu_tied, tmp_path):
  # A model saved by transformers 4.x's TFT5ForConditionalGeneration: 'Save them with
  # model.save_pretrained(DIR)' was all the advice. (Flax's flax_model.msgpack loads:
  # test_flax_checkpoints.py.)
  copy_config(relu_tied.path, tmp_path)
  (tmp_path / "tf_model.h5").write_bytes(b"\x80")
  with pytest.raises(FileNotFoundError, match="No T5 weights") as e:
    load_t5(tmp_path)
  assert "tf_model.h5 is not read here" in str(e.value)
  assert "from_pretrained(DIR, from_tf=True).save_pretrained(DIR)" in str(e.value)
  assert "flax_model.msgpack" in str(e.value)  # among the files that are read

def test_truncated_safetensors(relu_tied, tmp_path):
  copy_config(relu_tied.path, tmp_path)
  with open(os.path.join(relu_tied.path, "model.safetensors"), "rb") as f:
    data = f.read()
  (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="safetensors") as e:
    load_t5(tmp_path)
  assert str(tmp_path / "model.safetensors") in str(e.value)

_LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize 242041896\n".format(
    "0" * 64)

@pytest.mark.parametrize("weights",
                         ["model.safetensors", "pytorch_model.bin", "flax_model.msgpack"])
def test_git_lfs_pointer_weights_say_to_fetch_them(weights, relu_tied, tmp_path):
  # A hub repository cloned without Git LFS: 'header too large ... truncated?' or torch's advice
  # to load with weights_only=False used to be all the user saw.
  copy_config(relu_tied.path, tmp_path)
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
  copy_config(relu_tied.path, tmp_path)
  with pytest.raises(ValueError) as e:
    load_t5(tmp_path)
  msg = str(e.value)
  assert str(tmp_path) in msg
  assert "encoder/block_1/layer_1/DenseReluDense/wo/kernel" in msg  # missing
  assert "encoder.block.7.layer.0.SelfAttention.q.weight" in msg  # unexpected
  assert "decoder.final_layer_norm.weight: checkpoint (31,) vs model (32,)" in msg
  assert "final_layer_norm" not in msg.split("missing params ")[1].split(";")[0]  # named once

def test_unknown_feed_forward_proj(relu_tied, tmp_path):
  with pytest.raises(ValueError, match="'gated-foo'"):
    T5Config.from_dict({"feed_forward_proj": "gated-foo"})
  shutil.copy(os.path.join(relu_tied.path, "model.safetensors"), tmp_path)
  with open(os.path.join(relu_tied.path, "config.json")) as f:
    cfg = json.load(f)
  cfg["feed_forward_proj"] = "swiglu-ish"
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match="feed_forward_proj") as e:
    load_t5(tmp_path)
  assert str(tmp_path / "config.json") in str(e.value)

class _Touch:
  """Unpickling this calls Path.touch: code that a weights-only load must not run."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (type(self.path).touch, (self.path,))

def test_a_pickle_that_runs_code_is_refused_not_run(relu_tied, tmp_path):
  marker = tmp_path / "ran"
  copy_config(relu_tied.path, tmp_path)
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
  copy_config(relu_tied.path, tmp_path)
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

def test_a_pickle_of_a_blocked_module_says_which(relu_tied, tmp_path):
  # torch wraps the unpickler's 'GLOBAL posix.system whose module posix is blocked' in paragraphs
  # of advice whose first sentence is all that was kept: 'Weights only load failed', no reason.
  copy_config(relu_tied.path, tmp_path)
  torch.save({"shared.weight": torch.zeros(2, 2), "payload": os.system},
             tmp_path / "pytorch_model.bin")
  with pytest.raises(ValueError, match="Could not read PyTorch weights .*pytorch_model.bin") as e:
    load_t5(tmp_path)
  msg = str(e.value)
  assert f"(Trying to load unsupported GLOBAL {os.system.__module__}.system whose module" in msg
  assert "Weights only load failed" not in msg and "\n" not in msg and "\x1b" not in msg


def test_torch_load_detail_reads_the_unpickler_error_torch_wrapped():
  # How torch.load re-raises a weights-only failure (older torch: from a RuntimeError).
  for inner in (pickle.UnpicklingError, RuntimeError):
    try:
      try:
        raise inner("Unsupported operand 14. More advice.\nAnother line")
      except inner as e:
        raise pickle.UnpicklingError(f"Weights only load failed. \x1b[1mOnly if trusted\x1b[0m."
                                     f"\n\t(1) ...\n\nWeightsUnpickler error: {e}") from None
    except pickle.UnpicklingError as wrapped:
      assert torch_load_detail(wrapped) == "Unsupported operand 14"
  try:
    try:
      raise KeyError("unrelated")
    except KeyError:  # an error raised while handling another keeps its own message
      raise pickle.UnpicklingError("invalid load key, 'x'.")
  except pickle.UnpicklingError as e:
    assert torch_load_detail(e) == "invalid load key, 'x'"
  assert torch_load_detail(EOFError()) == "EOFError"


@pytest.mark.parametrize("wrap", ["nested", "extra", "list"])
def test_pytorch_bin_of_more_than_tensors_is_named(wrap, relu_tied, tmp_path):
  # A training checkpoint torch.load(weights_only=True) reads: it raised AttributeError ('dict'
  # object has no attribute 'detach').
  copy_config(relu_tied.path, tmp_path)
  state = relu_tied.hf_model.state_dict()
  obj = {"nested": {"state_dict": dict(state)}, "extra": {**state, "epoch": 3},
         "list": [state]}[wrap]
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
