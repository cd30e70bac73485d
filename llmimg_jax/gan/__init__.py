"""Text-conditioned GAN (DF-GAN style): generator, discriminator, losses, DiffAugment, EMA.

DF-GAN's (github.com/tobran/DF-GAN, code/models/GAN.py) channel schedule, fusion blocks, D blocks,
logit head, hinge losses with the mismatched term at weight 1/2, MA-GP (k=2, p=6) and Adam(0, 0.9)
at 1e-4 / 4e-4, with these departures (benchmarks/torch_gan.py, the PyTorch twin, has those of
architecture):
- text: T5 token states and their masked mean (`sentence_embedding`) in place of DAMSM's, each
  projected by a learned layer (`sent_proj`) in G and in D; cross-attention to the tokens at
  `attn_resolutions`; an optional contrastive head in D (`info_nce`, weight 0 by default);
- G's 4x4 start reads cond = [z, sentence] (DF-GAN's reads z alone): text shapes the coarsest
  layout too, for 4*4*8*nf*cond_dim more weights (1.05M at nf=32);
- an Affine's gamma and beta share one hidden layer (DF-GAN: two MLPs);
- each G block's residual branch has a learned gain starting at 1 (DF-GAN adds it unscaled);
- D's logit head keeps its two convs' biases (DF-GAN's have none): 2*nf + 1 parameters;
- Flax's initialisers (lecun-normal weights, zero biases) in place of PyTorch's defaults
  (uniform weights, ~sqrt(3) narrower, and random biases); zero-init outputs as in DF-GAN;
- a "mismatched" pair whose caption repeats the image's own is left out of the mismatch term
  (`mismatch_weights`);
- optional DiffAugment, EMA of G, lazy MA-GP and R1 (train.config).
"""
from llmimg_jax.gan.common import SUPPORTED_RESOLUTIONS, sentence_embedding
from llmimg_jax.gan.diffaugment import diff_augment
from llmimg_jax.gan.discriminator import Discriminator
from llmimg_jax.gan.ema import ema_update
from llmimg_jax.gan.generator import Generator
from llmimg_jax.gan.losses import (
    GRADIENT_PENALTIES,
    d_hinge_loss,
    g_hinge_loss,
    gradient_penalty,
    info_nce,
    ma_gp,
    mismatch_weights,
    mismatched,
    r1_penalty,
)

__all__ = [
    "SUPPORTED_RESOLUTIONS",
    "GRADIENT_PENALTIES",
    "Discriminator",
    "Generator",
    "d_hinge_loss",
    "diff_augment",
    "ema_update",
    "g_hinge_loss",
    "gradient_penalty",
    "info_nce",
    "ma_gp",
    "mismatch_weights",
    "mismatched",
    "r1_penalty",
    "sentence_embedding",
]
