r"""folder_64: train on your own folder of images with captions, at 64px.

  python train.py --config configs/folder_64.py --workdir runs/mine \
      --config.data.folder=/path/to/images

The folder holds images and `captions.jsonl` (`{"file_name": "a.jpg", "caption": "..."}` or
`"captions": [...]` per line) or `captions.csv`; unreadable images and bad lines are skipped and
counted (`python -m llmimg_jax.data.prepare --dataset captioned_folder --folder DIR
--image_size 72` builds the dataset this config reads and shows the summary first). DiffAugment
is on, as small datasets need it. What it reaches depends on your data: with a few thousand
consistent images, recognisable samples after ~20k steps.
"""
from llmimg_jax.train.config import base_config


def get_config():
  c = base_config()
  c.data.name = "captioned_folder"
  c.data.folder = ""  # required: --config.data.folder=/path/to/images
  c.data.image_size = 64
  c.data.store_size = 72  # stored larger, so the random crops (>= 0.9 x 72 = 65 px) shrink to 64
  c.data.random_crop = 0.9
  c.data.random_flip = True
  c.data.num_workers = 2

  c.text.max_length = 128
  c.text.d_model = 128
  c.text.d_ff = 256
  c.text.num_layers = 2
  c.text.num_heads = 4

  c.model.resolution = 64
  c.model.nf_g = 32
  c.model.nf_d = 32
  c.model.attn_resolutions = (16, 32)

  c.loss.diffaugment = "color,translation,cutout"
  c.loss.contrastive_weight = 0.2

  c.train.steps = 50_000
  c.train.batch_size = 32
  c.train.sample_every = 1_000
  c.train.ckpt_every = 1_000
  c.train.sample_prompts = ("a photo", "a close-up photo", "a picture of a person",
                            "a landscape")
  return c
