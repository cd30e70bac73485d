"""Text-conditioned GAN (DF-GAN style): generator, discriminator, losses, DiffAugment, EMA."""
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
