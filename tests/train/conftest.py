import ml_collections
import pytest

from llmimg_jax.train.config import base_config


def tiny_config(data_dir) -> ml_collections.ConfigDict:
  """A config small enough to compile and step in seconds on a CPU."""
  c = base_config()
  c.data.name = "captioned_shapes"
  c.data.config = "tiny_32"
  c.data.data_dir = str(data_dir)
  c.data.image_size = 32
  c.data.num_workers = 0
  c.text.max_length = 32
  c.text.d_model = 32
  c.text.d_ff = 64
  c.text.num_layers = 1
  c.text.num_heads = 2
  c.model.resolution = 32
  c.model.nf_g = 8
  c.model.nf_d = 8
  c.model.z_dim = 16
  c.model.cond_dim = 32
  c.loss.contrastive_weight = 0.1
  c.train.steps = 4
  c.train.batch_size = 8
  c.train.log_every = 2
  c.train.sample_every = 4
  c.train.ckpt_every = 2
  c.train.sample_prompts = ("a red circle", "a blue square")
  c.train.samples_per_prompt = 2
  return c


def tiny_pretrained_t5(path, encoder_only: bool = False, vocab_size: int = 384) -> str:
  """A tiny random T5 (+ ByT5 tokenizer) saved by transformers, as a 'pretrained' checkpoint
  (encoder_only: by T5EncoderModel, without decoder weights)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  hf_config = transformers.T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                    num_decoder_layers=1, num_heads=4, pad_token_id=0,
                                    eos_token_id=1, decoder_start_token_id=0)
  model_class = (transformers.T5EncoderModel if encoder_only
                 else transformers.T5ForConditionalGeneration)
  model_class(hf_config).save_pretrained(path)
  transformers.ByT5Tokenizer().save_pretrained(path)
  return str(path)


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
  """A tiny captioned_shapes build shared by the training tests (built on first use)."""
  return tmp_path_factory.mktemp("tfds")
