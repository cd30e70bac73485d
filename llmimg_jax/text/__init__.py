"""Flax (linen) T5 text model: config, modules, HF checkpoint loading, generation, tokenizers.

  config, params = load_t5("path/to/flan-t5-small")          # or load_pretrained(path, max_length)
  enc = T5EncoderModel(config, jnp.bfloat16).apply(
      {"params": {k: params[k] for k in ("shared", "encoder")}}, ids, mask)  # [b, l, d_model]
  ids = generate(params, config, ids, mask, max_new_tokens=32, num_beams=4)  # int32 [b, 32]
"""
from llmimg_jax.text.config import T5Config
from llmimg_jax.text.generate import generate, strip_generated
from llmimg_jax.text.generator import TextGenerator
from llmimg_jax.text.loading import (convert_state_dict, init_params, load_pretrained, load_t5,
                                     read_state_dict)
from llmimg_jax.text.modeling import T5EncoderModel, T5ForConditionalGeneration
from llmimg_jax.text.tokenizer import TextTokenizer, load_tokenizer

__all__ = [
    "T5Config", "T5EncoderModel", "T5ForConditionalGeneration", "TextGenerator", "TextTokenizer",
    "convert_state_dict", "generate", "init_params", "load_pretrained", "load_t5",
    "load_tokenizer", "read_state_dict", "strip_generated",
]
