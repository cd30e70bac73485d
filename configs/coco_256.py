"""coco_256: COCO captions at 256px, DF-GAN scale (a TPU pod slice or a multi-GPU host).

  pip install -e '.[tf]'   # TFDS's coco_captions reader needs TensorFlow
  python train.py --config configs/coco_256.py --workdir /mnt/BUCKET/coco_256 --distributed

(--distributed on a TPU pod slice, every host; on one multi-GPU host drop it: train.py uses every
local device without it, and --distributed alone finds no cluster there.)

The workdir must be a filesystem every host shares (e.g. a gcsfuse mount of a bucket at
/mnt/BUCKET on each TPU VM): Orbax writes each host's checkpoint shards there. So must
data.data_dir (or TFDS_DATA_DIR; e.g. gs://BUCKET/tensorflow_datasets): host 0 builds COCO there
and every host reads that build (the run stops at the start if a host does not see it).

DF-GAN's COCO recipe (nf=32, hinge + MA-GP k=2 p=6, Adam(0, 0.9) with lr 1e-4 / 4e-4) with a
frozen FLAN-T5-base encoder in place of DAMSM (the model's other departures from DF-GAN:
llmimg_jax/gan/__init__.py). DF-GAN reports FID 19.3 on COCO after ~290 epochs
at batch 32; at the global batch of 256 here that is ~93k steps. `python evaluate.py --workdir RUN
--inception_weights pt_inception-2015-12-05-6726825d.pth --ref_stats STATS.npz --num_samples
5000` measures the standard FID on the test split's captions. That split (TFDS's Karpathy split)
holds 5,000 images, while DF-GAN's number is over 30,000 images, and FID grows as the count
falls: ours reads higher for the count alone. We have not trained this config, so no FID is ours.
"""
from llmimg_jax.train.config import base_config


def get_config():
  c = base_config()
  c.data.name = "coco_captions"
  c.data.image_size = 256
  # A square of 85-100% of the short side at a random place, resized to 256. DF-GAN resizes to
  # 76/64 of 256, then crops 256: always 84% of the side, at a random place.
  c.data.random_crop = 0.85
  c.data.random_flip = True
  c.data.num_workers = 8

  c.text.mode = "frozen"
  c.text.checkpoint = "google/flan-t5-base"
  c.text.max_length = 64

  c.model.resolution = 256
  c.model.nf_g = 32
  c.model.nf_d = 32
  c.model.z_dim = 100
  c.model.cond_dim = 256
  c.model.attn_resolutions = (32,)
  c.model.dtype = "bfloat16"

  c.loss.diffaugment = ""
  c.loss.contrastive_weight = 0.0

  c.train.steps = 93_000
  c.train.batch_size = 256
  c.train.log_every = 100
  c.train.sample_every = 2_500
  c.train.ckpt_every = 2_500
  c.train.sample_prompts = (
      "a man riding a wave on top of a surfboard", "a plate of food with broccoli and rice",
      "a red double decker bus driving down a street", "a herd of zebras grazing in a field",
      "a kitchen with wooden cabinets and a white stove", "a cat sleeping on a laptop keyboard",
      "a train traveling down tracks next to a forest", "a giraffe standing next to a tree")
  return c
