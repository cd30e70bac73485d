"""The sampling tests' caption expander (a tiny saved T5)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def expander_dir(tmp_path_factory) -> str:
  """A tiny random seq2seq T5 with the ByT5 tokenizer, saved by transformers. Its output layer
  only scores printable ASCII (ids 35-129, bytes 32-126): a random model's greedy choice is
  otherwise often EOS or a byte that decodes to nothing, and the expander falls back to the
  prompt, so a test could not tell an expanded caption from the prompt."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  path = str(tmp_path_factory.mktemp("expander"))
  torch.manual_seed(0)
  config = transformers.T5Config(
      vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=1,
      relative_attention_num_buckets=16, relative_attention_max_distance=32,
      initializer_factor=2.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
      tie_word_embeddings=False)
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():  # sharp, input-dependent logits (see tests/text/conftest.py)
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.fill_(1.0)
    printable = torch.zeros(config.vocab_size, dtype=torch.bool)
    printable[35:130] = True
    model.lm_head.weight[~printable] = 0.0
  model.save_pretrained(path)
  transformers.ByT5Tokenizer().save_pretrained(path)
  return path
