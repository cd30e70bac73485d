"""llmimg_jax: text-to-image generation in JAX/Flax (a Flax T5 and a T5-conditioned GAN)."""

__version__ = "0.1.0"
