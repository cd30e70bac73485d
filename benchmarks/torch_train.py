"""The PyTorch twin of llmimg_jax.train.step.train_step, with DiffAugment, losses and EMA.

The same work per step as the JAX step: one text-encoder forward and one generator forward, each
reused by both halves; the discriminator (and the trainable T5 text encoder) on real / detached
fake / mismatched pairs with hinge loss, MA-GP (a double backward w.r.t. image and sentence,
taken through the real pairs' D forward, as DF-GAN does) and the InfoNCE head; Adam(b1=0,
b2=0.9) updates (after train.grad_clip's global-norm clip when set); then the generator's hinge
(+ contrastive) loss through the updated D, and the EMA of G. Differences, none of which changes
the cost measurably: random numbers come from torch's generator, and a non-finite update is
flagged (grad norms computed, as in JAX) but not skipped.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import torch_gan


# --- DiffAugment (NCHW), as llmimg_jax.gan.diffaugment ---------------------------------------

def _uniform(b: int, like: torch.Tensor) -> torch.Tensor:
  return torch.rand(b, 1, 1, 1, device=like.device, dtype=torch.float32).to(like.dtype)


def color(x: torch.Tensor) -> torch.Tensor:
  b = x.shape[0]
  x = x + (_uniform(b, x) - 0.5)
  mean = x.mean(dim=1, keepdim=True)
  x = (x - mean) * (_uniform(b, x) * 2) + mean
  mean = x.mean(dim=(1, 2, 3), keepdim=True)
  return (x - mean) * (_uniform(b, x) + 0.5) + mean


def translate(x: torch.Tensor, shift_h: torch.Tensor, shift_w: torch.Tensor) -> torch.Tensor:
  """out[i, j] = x[i - shift_h, j - shift_w], zero outside; shifts are int [b]."""
  b, c, h, w = x.shape
  rows = torch.arange(h, device=x.device)[None, :] - shift_h[:, None]  # [b, h]
  cols = torch.arange(w, device=x.device)[None, :] - shift_w[:, None]  # [b, w]
  padded = F.pad(x, (1, 1, 1, 1))  # index 0 and h+1 are zero
  rows = (rows.clamp(-1, h) + 1)[:, None, :, None].expand(b, c, h, w + 2)
  cols = (cols.clamp(-1, w) + 1)[:, None, None, :].expand(b, c, h, w)
  return padded.gather(2, rows).gather(3, cols)


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
  b, _, h, w = x.shape
  sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  dh = torch.randint(-sh, sh + 1, (b,), device=x.device)
  dw = torch.randint(-sw, sw + 1, (b,), device=x.device)
  return translate(x, dh, dw)


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
  b, _, h, w = x.shape
  ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  oh = torch.randint(0, h + (1 - ch % 2), (b, 1, 1, 1), device=x.device) - ch // 2
  ow = torch.randint(0, w + (1 - cw % 2), (b, 1, 1, 1), device=x.device) - cw // 2
  rows = torch.arange(h, device=x.device)[None, None, :, None]
  cols = torch.arange(w, device=x.device)[None, None, None, :]
  inside = (rows >= oh) & (rows < oh + ch) & (cols >= ow) & (cols < ow + cw)  # [b, 1, h, w]
  return torch.where(inside, torch.zeros((), dtype=x.dtype, device=x.device), x)


_OPS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: torch.Tensor, policy: str) -> torch.Tensor:
  for name in (p.strip() for p in policy.split(",") if p.strip()):
    x = _OPS[name](x)
  return x


# --- losses, as llmimg_jax.gan.losses ---------------------------------------------------------

def mismatch_weights(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """1 where the rolled sentence is another caption than the item's own, 0 where the same."""
  keys = torch.where(mask > 0, ids, -1)
  return (keys != keys.roll(1, 0)).any(-1).float()


def d_hinge_loss(real, fake, mis, mis_weight=None) -> torch.Tensor:
  mis_each = F.relu(1 + mis)
  mis_term = (mis_each.mean() if mis_weight is None else
              (mis_weight * mis_each).sum() / mis_weight.sum().clamp_min(1.0))
  return F.relu(1 - real).mean() + 0.5 * (F.relu(1 + fake).mean() + mis_term)


def ma_gp(logits: torch.Tensor, x: torch.Tensor, s: torch.Tensor, k: float, p: float
          ) -> torch.Tensor:
  """k * mean ||[dD/dx, dD/ds]|| ** p for D's logits [b] of (x, s), from that same forward (as
  DF-GAN's MA_GP(imgs, sent_emb, pred_real)); differentiable (create_graph) w.r.t. D and the text.
  """
  gx, gs = torch.autograd.grad(logits.float().sum(), (x, s), create_graph=True)
  sq = gx.square().flatten(1).sum(1) + gs.square().flatten(1).sum(1)  # [b]
  return k * (sq ** (p / 2.0)).mean()


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
  a = a.float() / a.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)
  b = b.float() / b.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)
  logits = a @ b.T / temperature  # [b, b]
  labels = torch.arange(a.shape[0], device=a.device)
  return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


# --- the training state and step --------------------------------------------------------------

@dataclasses.dataclass
class TorchGAN:
  """Modules, optimizers and the callables the step uses (eager or torch.compile'd)."""
  generator: torch_gan.Generator
  discriminator: torch_gan.Discriminator
  text_encoder: nn.Module  # transformers.T5EncoderModel
  ema_generator: torch_gan.Generator
  g_opt: torch.optim.Optimizer
  d_opt: torch.optim.Optimizer
  text_opt: torch.optim.Optimizer | None
  cfg: Any  # the llmimg_jax train config (ml_collections)
  autocast_dtype: torch.dtype | None = None  # bf16 autocast, or None for fp32
  step: int = 0
  # Optionally compiled callables; the MA-GP always uses the eager discriminator (double
  # backward through compiled graphs is unsupported by torch.compile).
  g_fn: Any = None
  d_features: Any = None
  d_logits: Any = None

  def __post_init__(self):
    self.g_fn = self.g_fn or self.generator
    self.d_features = self.d_features or self.discriminator.features
    self.d_logits = self.d_logits or self.discriminator.logits

  def autocast(self):
    if self.autocast_dtype is None:
      return contextlib.nullcontext()
    device = next(self.generator.parameters()).device.type
    return torch.autocast(device, dtype=self.autocast_dtype)


def build(cfg: Any, text_encoder: nn.Module, device: str | torch.device,
          autocast_dtype: torch.dtype | None = None, fused_adam: bool = True) -> TorchGAN:
  """The twin as run.py times it; `fused_adam=False`: torch's default Adam and G's weights
  contiguous, as before 7657fbb (benchmarks/twin_ab.py compares the two)."""
  text_dim = text_encoder.config.d_model
  g, d = torch_gan.build_from_config(cfg, text_dim)
  g, d, text_encoder = g.to(device), d.to(device), text_encoder.to(device)
  # G and D's convolutions in channels_last, PyTorch's faster layout on CPU and for GPU tensor
  # cores (D's: -5 to -6% of the 64px CPU step; G's activations are channels_last already, from
  # its first permute, and its weights follow for fused Adam).
  d = d.to(memory_format=torch.channels_last)
  if fused_adam:
    g = g.to(memory_format=torch.channels_last)
  trainable = cfg.text.mode == "trainable"

  def adam(module: nn.Module, lr: float) -> torch.optim.Optimizer:
    # fused: one kernel over all tensors (torch's default is a Python loop over them on CPU);
    # it needs each weight in its gradient's memory format, hence G in channels_last above.
    return torch.optim.Adam(module.parameters(), lr=lr, betas=(cfg.train.b1, cfg.train.b2),
                            eps=1e-8, fused=fused_adam or None)

  text_encoder.requires_grad_(trainable)
  text_encoder.eval()  # no dropout work (rate 0 anyway), as JAX's deterministic=True
  return TorchGAN(
      generator=g, discriminator=d, text_encoder=text_encoder,
      ema_generator=copy.deepcopy(g).requires_grad_(False),
      g_opt=adam(g, cfg.train.lr_g), d_opt=adam(d, cfg.train.lr_d),
      text_opt=adam(text_encoder, cfg.train.lr_text) if trainable else None,
      cfg=cfg, autocast_dtype=autocast_dtype)


def encode_text(text_encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
  words = text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()
  return words, torch_gan.sentence_embedding(words, mask)


def _grad_norm(params) -> torch.Tensor:
  grads = [p.grad for p in params if p.grad is not None]
  return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def _clip(params, norm: torch.Tensor, max_norm: float) -> None:
  """As optax.clip_by_global_norm (train.state's _adam): gradients of global `norm` above
  `max_norm` scaled down to it; 0 = off."""
  if max_norm:
    grads = [p.grad for p in params if p.grad is not None]
    torch._foreach_mul_(grads, torch.clamp(max_norm / norm, max=1.0))


def train_step(m: TorchGAN, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
  """One update from image uint8 [b, 3, R, R], input_ids / attention_mask [b, L]."""
  cfg, D = m.cfg, m.discriminator
  policy = cfg.loss.diffaugment
  real = batch["image"].float() / 127.5 - 1.0
  ids, mask = batch["input_ids"], batch["attention_mask"]
  z = torch.randn(real.shape[0], cfg.model.z_dim, device=real.device)
  metrics = {}
  with m.autocast():
    # One text-encoder forward, as in JAX: D's loss trains it through `sent`; G reads it detached.
    words, sent = encode_text(m.text_encoder, ids, mask)
    words_fixed, sent_fixed = words.detach(), sent.detach()
    fake = m.g_fn(z, sent_fixed, words_fixed, mask)  # [b, 3, R, R], graph kept for the G update

    real_aug = diff_augment(real, policy)
    gp = cfg.loss.gp == "ma_gp"
    if gp and cfg.loss.gp_every != 1:  # ours skips the penalty between its steps: unequal work
      raise NotImplementedError(f"torch twin: config.loss.gp_every={cfg.loss.gp_every} (the lazy "
                                "penalty) is not mirrored; time with gp_every=1.")
    if gp:  # MA-GP differentiates this forward (XLA shares the JAX step's forward the same way)
      real_aug.requires_grad_(True)
      if not sent.requires_grad:  # a frozen text encoder
        sent = sent.detach().requires_grad_(True)
    # The penalty's double backward needs eager D (torch.compile does not support it).
    feats_real = (D.features if gp else m.d_features)(real_aug)
    logits_real = (D.logits if gp else m.d_logits)(feats_real, sent)
    logits_mis = m.d_logits(feats_real, sent.roll(1, 0))
    logits_fake = m.d_logits(m.d_features(diff_augment(fake.detach(), policy)), sent)
    hinge = d_hinge_loss(logits_real, logits_fake, logits_mis, mismatch_weights(ids, mask))
    d_loss = hinge
    if gp:
      d_loss = d_loss + ma_gp(logits_real, real_aug, sent, cfg.loss.magp_k, cfg.loss.magp_p)
    elif cfg.loss.gp != "none":
      raise NotImplementedError(f"torch twin: config.loss.gp={cfg.loss.gp!r} is not mirrored.")
    if cfg.loss.contrastive_weight > 0:
      d_loss = d_loss + cfg.loss.contrastive_weight * info_nce(
          D.image_embedding(feats_real), D.text_embedding(sent), cfg.loss.contrastive_temperature)
  m.d_opt.zero_grad(set_to_none=True)
  if m.text_opt is not None:
    m.text_opt.zero_grad(set_to_none=True)
  # Gradients of D and the text encoder only, as the JAX step (not of real_aug, a leaf for MA-GP).
  d_loss.backward(inputs=[*D.parameters(),
                          *(m.text_encoder.parameters() if m.text_opt is not None else ())])
  clip = cfg.train.get("grad_clip", 0.0)
  metrics["grad_norm_d"] = _grad_norm(D.parameters())
  _clip(D.parameters(), metrics["grad_norm_d"], clip)
  m.d_opt.step()
  if m.text_opt is not None:
    metrics["grad_norm_text"] = _grad_norm(m.text_encoder.parameters())
    _clip(m.text_encoder.parameters(), metrics["grad_norm_text"], clip)
    m.text_opt.step()

  with m.autocast():
    feats = m.d_features(diff_augment(fake, policy))
    g_loss = -m.d_logits(feats, sent_fixed).float().mean()
    if cfg.loss.contrastive_weight > 0 and cfg.loss.contrastive_g:
      g_loss = g_loss + cfg.loss.contrastive_weight * info_nce(
          D.image_embedding(feats), D.text_embedding(sent_fixed), cfg.loss.contrastive_temperature)
  g_params = list(m.generator.parameters())
  # Gradients w.r.t. G only: D's weight gradients are not computed (as JAX's vjp w.r.t. fake).
  for p, g in zip(g_params, torch.autograd.grad(g_loss, g_params)):
    p.grad = g
  metrics["grad_norm_g"] = _grad_norm(g_params)
  _clip(g_params, metrics["grad_norm_g"], clip)
  m.g_opt.step()
  decay = min(cfg.train.ema_decay, (1.0 + m.step) / (10.0 + m.step))
  with torch.no_grad():
    torch._foreach_lerp_(list(m.ema_generator.parameters()), g_params, 1.0 - decay)
  m.step += 1
  metrics.update(d_loss=d_loss.detach(), g_loss=g_loss.detach(), d_hinge=hinge.detach())
  metrics["finite"] = torch.isfinite(torch.stack([v.float() for v in metrics.values()])).all()
  return metrics


@torch.inference_mode()
def generate_images(m: TorchGAN, z: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
                    ) -> torch.Tensor:
  """uint8 [b, 3, R, R] from the EMA generator, as llmimg_jax.train.step.generate_images."""
  with m.autocast():
    words, sent = encode_text(m.text_encoder, ids, mask)
    images = m.ema_generator(z, sent, words, mask)
  return ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
