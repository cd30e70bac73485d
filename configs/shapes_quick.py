"""shapes_quick: the README's main job, a 32px captioned-shapes GAN that trains on a laptop CPU.

  python train.py --config configs/shapes_quick.py --workdir runs/shapes_quick

Data: captioned_shapes/center_32 (one shape in the centre, drawn 2x larger, so only its shape,
colour and size are to learn). On a 2-core CPU it runs ~7.6 steps/s (batch 16, ~120 images/s)
with samples and checkpoints every 500 steps: the README's command from a fresh clone in a fresh
venv took 9.8 minutes in all, ~60 s `pip install` + 8.8 min train.py (2026-11-29; dataset
already built, building it takes ~27 s more; 11.25 min train.py before that day's faster step).
What it reaches: in that run's samples (runs/shapes_quick/samples/step_0004000.png) all 8 prompts
have the named colour and 7 the named shape (the red circle is a blob). `python evaluate.py
--workdir runs/shapes_quick --split test --split holdout --num_samples 500` on it (step 4000; 30 s
with the evaluator cached): test caption accuracy 0.892 (shape 0.894, colour 1.000, size 1.000);
holdout, unseen (shape, colour) pairs, 0.736 (shape 0.754, colour 0.968); in-domain FID 66.0
(real-vs-real floor 22.2); real images score 1.000. (The run before the faster step: 0.904 /
0.688, FID 72.0.)
On the current 2-core AMD EPYC VM (2026-12-01, code with one T5 forward per step) the same
command took 5.5 minutes in all: 39 s `pip install` + 4.9 min train.py (~13 steps/s, including
building the dataset); evaluate.py on it: test caption accuracy 0.874 (shape 0.876, colour 0.998,
size 1.000), holdout 0.642 (shape 0.650, colour 0.978), FID 75.5; all 8 prompts of its step-4000
grid in the named colour and shape. With train.py's host-memory setting (2026-12-01, `28cce41`):
32 s `pip install` + 4.1 min train.py (~17-20 steps/s; dataset already built); test caption
accuracy 0.894 (shape 0.894, colour 1.000, size 1.000), holdout 0.612 (shape 0.662, colour
0.932), FID 67.7. With the faster upsample-conv gradient (`972b9d7`): 4.7 minutes in all, 4.0 min
of it train.py; test caption accuracy 0.910 (shape 0.914, colour 0.996, size 1.000), holdout 0.662
(shape 0.702, colour 0.938), FID 55.7.
Learning curve (`benchmarks/learning_curve.py --steps 4000 --every 500 --num_train 10000
--num_test 500 --num_eval 200 --evaluator_steps 800`, EMA samples of 200 test captions, no flips):
caption accuracy 0.36 at step 2000, 0.77 at 3000, 0.91 at 4000. The learning rates are 4x those
of earlier versions of this config, which reached 0.27 at step 4000 (the sweep is in
benchmarks/RESULTS.md).
In-training evaluation is off here (config.eval.every = 0): the evaluator's one-time training
(~4.5 CPU-min) would cost this run 300+ steps. Once it is cached (after one `python evaluate.py`
or a run with eval on), `--config.eval.every=500` logs caption accuracy and in-domain FID on 256
test captions (eval/* in TensorBoard, <workdir>/best.json).
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
