"""shapes_64: full-quality 64px captioned shapes (one GPU or TPU host).

  python train.py --config configs/shapes_64.py --workdir runs/shapes_64

DF-GAN-sized networks (nf=32) with a from-scratch ByT5-vocabulary T5 encoder trained through the
discriminator (matching-aware hinge + contrastive head). Expected: by ~50k steps samples follow
the captions' colours, shapes, sizes and positions; no accuracy is claimed here yet. The run
measures itself: every 2k steps caption accuracy and in-domain FID on 512 test captions go to
TensorBoard (eval/*) and the best step to <workdir>/best.json; `python evaluate.py --workdir ...`
scores any checkpoint on the test and holdout captions.
"""
from llmimg_jax.train.config import base_config


def get_config():
  c = base_config()
  c.data.name = "captioned_shapes"
  c.data.config = "64"
  c.data.image_size = 64
  c.data.random_flip = True  # the pipeline swaps 'left'/'right' in the caption
  c.data.num_workers = 2

  c.text.max_length = 200  # ByT5 bytes + EOS: the longest possible caption has 195 bytes
  c.text.d_model = 128
  c.text.d_ff = 256
  c.text.num_layers = 2
  c.text.num_heads = 4

  c.model.resolution = 64
  c.model.nf_g = 32
  c.model.nf_d = 32
  c.model.z_dim = 100
  c.model.cond_dim = 256
  c.model.attn_resolutions = (16, 32)
  c.model.dtype = "bfloat16"

  # Colour jitter, cutout and translation would change what the caption describes.
  c.loss.diffaugment = ""
  c.loss.contrastive_weight = 0.2

  c.train.steps = 100_000
  c.train.batch_size = 64
  c.train.sample_every = 2_000
  c.train.ckpt_every = 2_000
  c.eval.every = 2_000  # the evaluator trains once on first use (cached), then reads 512 images
  c.eval.num_samples = 512
  return c
