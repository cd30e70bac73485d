"""The GAN training step and sampling: our jitted train_step vs the PyTorch twin (eager, compiled).

Both sides start from the same weights (the JAX state converted into the torch modules), see the
same batch, and do the same work per step (see benchmarks/torch_train.py).
"""
from __future__ import annotations

import functools
import logging
from typing import Any

import jax
import numpy as np
import torch
import transformers

from benchmarks import timing, torch_gan, torch_train
from llmimg_jax.train import loop
from llmimg_jax.train.config import base_config
from llmimg_jax.train.mesh import compiler_options, make_mesh
from llmimg_jax.train.state import build_models, build_text, init_state
from llmimg_jax.train.step import generate_images, train_step

log = logging.getLogger(__name__)


def make_config(resolution: int, batch: int, nf: int, dtype: str) -> Any:
  """base_config (text encoder d_model 128, 2 layers, max_length 64) with DF-GAN-sized G/D,
  MA-GP, full DiffAugment and the contrastive head on, so every branch of the step runs."""
  c = base_config()
  c.model.resolution = c.data.image_size = resolution
  c.model.nf_g = c.model.nf_d = nf
  c.model.dtype = dtype
  c.train.batch_size = batch
  c.loss.contrastive_weight = 0.2
  return c


def _batch(cfg: Any, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
  rs = np.random.RandomState(seed)
  b, r, length = cfg.train.batch_size, cfg.model.resolution, cfg.text.max_length
  lengths = rs.randint(length // 4, length + 1, size=b)
  mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)  # [b, L]
  ids = np.where(mask > 0, rs.randint(3, vocab, size=(b, length)), 0).astype(np.int32)
  ids[np.arange(b), lengths - 1] = 1  # EOS
  image = rs.randint(0, 256, size=(b, r, r, 3)).astype(np.uint8)  # [b, R, R, 3]
  return {"image": image, "input_ids": ids, "attention_mask": mask}


def torch_batch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
  """_batch's arrays as the twin takes them: image uint8 [b, 3, R, R], ids and mask int64."""
  return {"image": torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous().to(device),
          "input_ids": torch.from_numpy(batch["input_ids"]).long().to(device),
          "attention_mask": torch.from_numpy(batch["attention_mask"]).long().to(device)}


def _hf_encoder(t5) -> torch.nn.Module:
  return transformers.T5EncoderModel(transformers.T5Config(
      vocab_size=t5.vocab_size, d_model=t5.d_model, d_kv=t5.d_kv, d_ff=t5.d_ff,
      num_layers=t5.num_layers, num_heads=t5.num_heads, feed_forward_proj=t5.feed_forward_proj,
      relative_attention_num_buckets=t5.relative_attention_num_buckets,
      relative_attention_max_distance=t5.relative_attention_max_distance,
      layer_norm_epsilon=t5.layer_norm_epsilon, dropout_rate=0.0, pad_token_id=t5.pad_token_id,
      eos_token_id=t5.eos_token_id, is_encoder_decoder=False, use_cache=False))


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


def _torch_twin(cfg, models, state, device, autocast_dtype, fused_adam: bool = True
                ) -> torch_train.TorchGAN:
  tg = torch_train.build(cfg, _hf_encoder(models.text_encoder.config), device, autocast_dtype,
                         fused_adam)
  torch_gan.load_flax_params(tg.generator, jax.device_get(state.g_params))
  torch_gan.load_flax_params(tg.ema_generator, jax.device_get(state.ema_params))
  torch_gan.load_flax_params(tg.discriminator, jax.device_get(state.d_params))
  torch_gan.load_flax_t5_encoder(tg.text_encoder, jax.device_get(state.text_params))
  counts = {
      "generator": (_count(state.g_params), torch_gan.count_params(tg.generator)),
      "discriminator": (_count(state.d_params), torch_gan.count_params(tg.discriminator)),
      "text_encoder": (_count(state.text_params), torch_gan.count_params(tg.text_encoder)),
  }
  bad = {k: v for k, v in counts.items() if v[0] != v[1]}
  if bad:
    raise AssertionError(f"JAX vs PyTorch parameter counts differ (jax, torch): {bad}")
  return tg


def _compile(tg: torch_train.TorchGAN) -> None:
  # Static shapes: the 32px and 64px twins share code objects, and with the default
  # (dynamic=None) the second resolution's graphs would be compiled for variable image sizes.
  tg.g_fn = torch.compile(tg.generator, dynamic=False)
  tg.d_features = torch.compile(tg.discriminator.features, dynamic=False)
  tg.d_logits = torch.compile(tg.discriminator.logits, dynamic=False)


def bench_gan(resolution: int, batch: int, nf: int, dtype: str, device: torch.device,
              warmup: int, iters: int, with_compile: bool) -> list[dict[str, Any]]:
  cfg = make_config(resolution, batch, nf, dtype)
  _, t5_config, _ = build_text(cfg)
  models = build_models(cfg, t5_config)
  state = jax.jit(functools.partial(init_state, models))(jax.random.PRNGKey(cfg.seed), None)
  autocast_dtype = torch.bfloat16 if dtype == "bfloat16" else None
  torch_eager = _torch_twin(cfg, models, state, device, autocast_dtype)
  params = {"G": _count(state.g_params), "D": _count(state.d_params),
            "T5": _count(state.text_params)}

  np_batch = _batch(cfg, t5_config.vocab_size)
  j_batch = jax.device_put(np_batch)
  t_batch = torch_batch(np_batch, device)

  # The step as train.py compiles it on one device: its XLA options (mesh.compiler_options: on
  # CPU, YNNPACK for dots only) and batch chunks (loop.batch_chunks: 2 on a multi-core CPU).
  mesh = make_mesh(jax.devices()[:1])
  options = compiler_options(mesh)
  compiled = loop.jit_train_step(models, mesh).lower(state, j_batch).compile()
  holder = {"state": state}

  def jax_step():
    holder["state"], metrics = compiled(holder["state"], j_batch)
    jax.block_until_ready(metrics)

  def torch_step(tg=torch_eager):
    torch_train.train_step(tg, t_batch)
    timing.torch_sync(device)

  fns = {"jax": jax_step, "torch": torch_step}
  compile_note = "not run (--no-compile / --quick)"
  if with_compile:
    torch_compiled = _torch_twin(cfg, models, state, device, autocast_dtype)
    try:
      _compile(torch_compiled)
      for _ in range(2):  # compiles; failures surface here
        torch_step(torch_compiled)
      fns["torch_compile"] = functools.partial(torch_step, torch_compiled)
      compile_note = ("G and D compiled (the real batch's D forward eager, for MA-GP's double "
                      "backward)")
    except Exception as e:  # report, keep benchmarking the rest
      compile_note = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
      log.warning("torch.compile training step %s", compile_note)
  t = timing.alternate(fns, warmup, iters)
  shape = f"{resolution}px b{batch} nf{nf}"
  step_row = dict(name=f"GAN train step ({shape})", jax=t["jax"], torch=t["torch"],
                  torch_compile=t.get("torch_compile"), compile_note=compile_note,
                  flops=timing.xla_flops(compiled, functools.partial(train_step, models), state,
                                         j_batch),
                  params=params, items=batch, unit="img",
                  xla_options=options)

  # Sampling: EMA generator + text encoder, uint8 images, on the same prompts and noise; with
  # the XLA options that sample.py's and train.py's sampling compile with, the step's.
  z = np.random.RandomState(1).randn(batch, cfg.model.z_dim).astype(np.float32)
  gen = jax.jit(functools.partial(generate_images, models), compiler_options=options)
  s = holder["state"]
  gen_args = (s.ema_params, s.text_params, jax.device_put(z), j_batch["input_ids"],
              j_batch["attention_mask"])
  gen_compiled = gen.lower(*gen_args).compile()
  t_z = torch.from_numpy(z).to(device)

  def jax_sample():
    gen_compiled(*gen_args).block_until_ready()

  def torch_sample():
    torch_train.generate_images(torch_eager, t_z, t_batch["input_ids"],
                                t_batch["attention_mask"])
    timing.torch_sync(device)

  ts = timing.alternate({"jax": jax_sample, "torch": torch_sample}, warmup, iters)
  sample_row = dict(name=f"Sampling EMA G + T5 ({shape})", jax=ts["jax"], torch=ts["torch"],
                    flops=timing.xla_flops(gen_compiled, gen, *gen_args), params=params,
                    items=batch, unit="img", xla_options=options)
  return [step_row, sample_row]
