"""shapes_quick: the README's main job, a 32px captioned-shapes GAN that trains on a laptop CPU.

  python train.py --config configs/shapes_quick.py --workdir runs/shapes_quick

Data: captioned_shapes/single_32 (one shape per image, drawn large enough to read at 32px).
On a 2-core CPU it runs ~6.3 steps/s (batch 16, ~100 images/s), so 4500 steps plus the dataset
build (~30-60 s) and compilation (~30 s) take about 13-14 minutes. What it reaches (measured on the
EMA samples of the 8 fixed prompts, runs/shapes_quick/samples/*.png): by step ~1000 objects sit
where the captions put them; by 2500 colours match for 6 of 8 prompts; by 4000 colours and
positions match for all 8. Shapes are NOT learned at this length: objects are still round blobs.
In-training evaluation is off here (config.eval.every = 0): the evaluator's one-time training
(minutes on a 2-core CPU) would add more than 5% to this run. Once it is cached (after one
`python evaluate.py` or run with eval on), `--config.eval.every=500` logs caption accuracy and
in-domain FID on 256 test captions (eval/* in TensorBoard, <workdir>/best.json).
"""
from llmimg_jax.train.config import base_config


def get_config():
  c = base_config()
  c.data.name = "captioned_shapes"
  c.data.config = "center_32"  # 50k images of one shape in the centre; builds in ~25 s
  c.data.image_size = 32
  c.data.random_crop = 0.0
  c.data.random_flip = True

  c.text.max_length = 72  # ByT5 bytes: center_32's longest captions are 65 bytes
  c.text.d_model = 64
  c.text.d_ff = 128
  c.text.num_layers = 1
  c.text.num_heads = 4

  c.model.resolution = 32
  c.model.nf_g = 16
  c.model.nf_d = 16
  c.model.z_dim = 32
  c.model.cond_dim = 64
  c.model.attn_resolutions = (16,)

  c.loss.diffaugment = ""
  c.loss.contrastive_weight = 0.5

  c.train.steps = 5000
  c.train.batch_size = 16
  c.train.lr_g = 2e-4
  c.train.ema_decay = 0.99
  c.train.log_every = 50
  c.train.sample_every = 500
  c.train.sample_prompts = (
      "a red circle", "a large blue square", "a small green triangle", "a big yellow star",
      "a purple hexagon in the middle", "an orange diamond", "a big white cross",
      "a large black triangle")
  c.train.ckpt_every = 500
  return c
