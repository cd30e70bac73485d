"""shapes_quick: the README's main job, a 32px captioned-shapes GAN that trains on a laptop CPU.

  python train.py --config configs/shapes_quick.py --workdir runs/shapes_quick

Data: captioned_shapes/center_32 (one shape in the centre, drawn 2x larger, so only its shape,
colour and size are to learn). 4000 steps at batch 16, samples and checkpoints every 500.
On the 2-core AMD EPYC dev VM the README's command (fresh clone and venv, dataset built by it)
takes 4-8 minutes in all (3m58s on a quiet VM and 6m05s beside other work, both 2026-12-04;
7m01s on a slower day, 2026-12-05),
~40 s of it `pip install` (11-20 steps/s in train.py's progress bar).
What it reaches (2026-12-03, `python evaluate.py --workdir runs/shapes_quick --split test --split
holdout --num_samples 500` at step 4000): test caption accuracy 0.894 (shape 0.898, colour 0.996,
size 1.000); holdout, unseen (shape, colour) pairs, 0.612 (shape 0.652, colour 0.936); in-domain
FID 66.0 (real-vs-real floor 22.2); real images score 1.000. 2026-12-04, after a change of the
strided conv's gradient summation order: test 0.876, holdout 0.608, FID 63.0. 2026-12-05, with
another record order (the seed hashed for grain): test 0.856, holdout 0.660, FID 63.9.
2026-12-06 (Intel VM; an evaluator trained afresh, so FIDs on its own scale): test 0.894,
holdout 0.740, FID 43.6 (floor 20.0); 2026-12-07 (the same VM, a fresh venv, other final losses):
test 0.858, holdout 0.662, FID 54.2 (floor 20.0). Over ten such runs since 2026-11-28: test
0.86-0.91, holdout 0.60-0.74 (benchmarks/RESULTS.md, "Learning curve of the quick config", has
each run and the learning-rate sweep behind this config's rates; caption accuracy 0.36 at step
2000, 0.77 at 3000, 0.91 at 4000).
In-training evaluation is off here (config.eval.every = 0): the evaluator's one-time training
(131 s on 2 cores, 2026-12-06) would take as long as 1000+ of this run's 4000 steps. Once
it is cached (after one `python evaluate.py` or a run with eval on), `--config.eval.every=500`
logs caption accuracy and in-domain FID on 256 test captions (eval/* in TensorBoard,
<workdir>/best.json).
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

  c.train.steps = 4000
  c.train.batch_size = 16
  # Learning rates 4x (2e-4, 4e-4, 4e-4): on learning curves (benchmarks/RESULTS.md) 3x-6x all
  # learn shapes within this budget, 4x best at step 4000; 1x reached shape accuracy 0.3.
  c.train.lr_g, c.train.lr_d, c.train.lr_text = 8e-4, 1.6e-3, 1.6e-3
  c.train.ema_decay = 0.99
  c.train.log_every = 50
  c.train.sample_every = 500
  c.train.sample_prompts = (
      "a red circle", "a large blue square", "a small green triangle", "a big yellow star",
      "a purple hexagon in the middle", "an orange diamond", "a big white cross",
      "a large black triangle")
  c.train.ckpt_every = 500
  return c
