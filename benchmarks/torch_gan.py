"""A PyTorch twin of llmimg_jax.gan's Generator and Discriminator, for side-by-side benchmarks.

Same layers, same parameter count and, given the same weights (`load_flax_params`), the same
outputs as the Flax modules up to float rounding. Layout is PyTorch's NCHW; the converter
transposes kernels (Dense [in, out] -> Linear [out, in], Conv HWIO -> OIHW).

Module names mirror the Flax param tree, so the torch state_dict key of a Flax param is its path
joined by '.', with kernel/scale -> weight (and Flax's `blocks_0` -> torch's `blocks.0`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmimg_jax.gan.common import channel_multipliers


def lrelu(x: torch.Tensor) -> torch.Tensor:
  return F.leaky_relu(x, 0.2)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
  return F.interpolate(x, scale_factor=2.0, mode="nearest")  # [b, c, 2h, 2w]


def sentence_embedding(words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """Mask-aware mean, fp32: [b, L, d], [b, L] -> [b, d] (as llmimg_jax.gan.sentence_embedding)."""
  m = (mask > 0).float()[..., None]  # [b, L, 1]
  total = torch.where(m > 0, words.float(), 0.0).sum(1)
  return total / m.sum(1).clamp_min(1.0)


class Affine(nn.Module):
  def __init__(self, cond_dim: int, features: int):
    super().__init__()
    self.fc1 = nn.Linear(cond_dim, features)
    self.fc2 = nn.Linear(features, 2 * features)
    nn.init.zeros_(self.fc2.weight)  # identity at init, as in DF-GAN and the Flax module
    with torch.no_grad():
      self.fc2.bias.copy_(torch.cat([torch.ones(features), torch.zeros(features)]))

  def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    gamma, beta = self.fc2(F.relu(self.fc1(cond))).chunk(2, dim=-1)  # [b, c] each
    return x * gamma[:, :, None, None] + beta[:, :, None, None]


class DFBlock(nn.Module):
  def __init__(self, cond_dim: int, features: int):
    super().__init__()
    self.affine0 = Affine(cond_dim, features)
    self.affine1 = Affine(cond_dim, features)

  def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    x = lrelu(self.affine0(x, cond))
    return lrelu(self.affine1(x, cond))


class UpBlock(nn.Module):
  """Upsample, residual (DFBlock, conv3x3, DFBlock, conv3x3) * gain; the 1x1 shortcut and the
  first DFBlock before the upsample (as ours: they commute with it)."""

  def __init__(self, cond_dim: int, in_features: int, features: int):
    super().__init__()
    if in_features != features:
      self.shortcut = nn.Conv2d(in_features, features, 1)
    else:
      self.shortcut = None
    self.fuse0 = DFBlock(cond_dim, in_features)
    self.conv0 = nn.Conv2d(in_features, features, 3, padding=1)
    self.fuse1 = DFBlock(cond_dim, features)
    self.conv1 = nn.Conv2d(features, features, 3, padding=1)
    self.gain = nn.Parameter(torch.ones(()))

  def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    shortcut = upsample2x(self.shortcut(x) if self.shortcut is not None else x)
    h = upsample2x(self.fuse0(x, cond))
    h = self.conv1(self.fuse1(self.conv0(h), cond))
    return shortcut + self.gain * h


class CrossAttention(nn.Module):
  """Image positions attend to the (masked) word states; zero-init residual gain. A row with no
  valid token gets a zero update, as ours."""

  def __init__(self, channels: int, word_dim: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.q_norm = nn.LayerNorm(channels, eps=1e-6)
    self.kv_norm = nn.LayerNorm(word_dim, eps=1e-6)
    self.query = nn.Linear(channels, channels, bias=False)
    self.key = nn.Linear(word_dim, channels, bias=False)
    self.value = nn.Linear(word_dim, channels)
    self.out = nn.Linear(channels, channels)
    self.gain = nn.Parameter(torch.zeros(()))

  def forward(self, x: torch.Tensor, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    nh, dh = self.num_heads, c // self.num_heads
    xs = x.flatten(2).transpose(1, 2)  # [b, hw, c]
    kv_in = self.kv_norm(words)
    q = self.query(self.q_norm(xs)).view(b, h * w, nh, dh)
    k = self.key(kv_in).view(b, -1, nh, dh)
    v = self.value(kv_in).view(b, -1, nh, dh)
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k).float() / math.sqrt(dh)
    valid = (mask > 0)[:, None, None, :]  # [b, 1, 1, L]
    logits = torch.where(valid, logits, -1e30)
    weights = torch.where(valid, logits.softmax(-1), 0.0)  # [b, heads, hw, L]
    out = torch.einsum("bhqk,bkhd->bqhd", weights.to(v.dtype), v).reshape(b, h * w, c)
    out = self.out(out).transpose(1, 2).reshape(b, c, h, w)
    out = torch.where((mask > 0).any(-1)[:, None, None, None], out, 0.0)  # not out's bias
    return x + self.gain * out


def _num_heads(channels: int, head_dim: int = 64) -> int:
  return channels // head_dim if channels >= head_dim and channels % head_dim == 0 else 1


class Generator(nn.Module):
  """Mirror of llmimg_jax.gan.Generator; images come back fp32 NCHW in [-1, 1]."""

  def __init__(self, resolution: int, nf: int = 32, z_dim: int = 100, cond_dim: int = 256,
               attn_resolutions: Sequence[int] = (16,), text_dim: int = 128):
    super().__init__()
    self.z_dim = z_dim
    chs = [nf * m for m in reversed(channel_multipliers(resolution))]
    self.channels = chs
    self.sent_proj = nn.Linear(text_dim, cond_dim)
    self.start = nn.Linear(z_dim + cond_dim, 16 * chs[0])
    self.blocks = nn.ModuleList()
    self.attns = nn.ModuleDict()
    for i, (cin, cout) in enumerate(zip(chs[:-1], chs[1:])):
      self.blocks.append(UpBlock(z_dim + cond_dim, cin, cout))
      res = 4 * 2**(i + 1)
      if res in attn_resolutions:
        self.attns[str(res)] = CrossAttention(cout, text_dim, _num_heads(cout))
    self.to_rgb = nn.Conv2d(chs[-1], 3, 3, padding=1)

  def forward(self, z: torch.Tensor, sent: torch.Tensor, words: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
    b = z.shape[0]
    cond = torch.cat([z, self.sent_proj(sent)], dim=-1)  # [b, z_dim + cond_dim]
    # The Flax start layer's outputs are laid out [4, 4, C] (NHWC).
    x = self.start(cond).view(b, 4, 4, self.channels[0]).permute(0, 3, 1, 2)
    for i, block in enumerate(self.blocks):
      x = block(x, cond)
      key = str(x.shape[-1])
      if key in self.attns:
        x = self.attns[key](x, words, mask)
    return torch.tanh(self.to_rgb(lrelu(x)).float())  # [b, 3, R, R]


class DownBlock(nn.Module):
  def __init__(self, in_features: int, features: int):
    super().__init__()
    self.conv0 = nn.Conv2d(in_features, features, 4, stride=2, padding=1, bias=False)
    self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=False)
    self.shortcut = nn.Conv2d(in_features, features, 1) if in_features != features else None
    self.gain = nn.Parameter(torch.zeros(()))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = lrelu(self.conv1(lrelu(self.conv0(x))))
    shortcut = F.avg_pool2d(x, 2)
    if self.shortcut is not None:
      shortcut = self.shortcut(shortcut)
    return shortcut + self.gain * h


class Discriminator(nn.Module):
  """Mirror of llmimg_jax.gan.Discriminator (features / logits / image_ and text_embedding)."""

  def __init__(self, resolution: int, nf: int = 32, cond_dim: int = 128, embed_dim: int = 128,
               contrastive: bool = True, text_dim: int = 128):
    super().__init__()
    chs = [nf * m for m in channel_multipliers(resolution)]
    self.cond_dim = cond_dim
    self.conv_img = nn.Conv2d(3, chs[0], 3, padding=1)
    self.blocks = nn.ModuleList([DownBlock(a, b) for a, b in zip(chs[:-1], chs[1:])])
    self.sent_proj = nn.Linear(text_dim, cond_dim)
    self.joint_conv = nn.Conv2d(chs[-1] + cond_dim, 2 * nf, 3, padding=1)
    self.logit_conv = nn.Conv2d(2 * nf, 1, 4)
    self.contrastive = contrastive
    if contrastive:
      self.image_proj = nn.Linear(chs[-1], embed_dim)
      self.text_proj = nn.Linear(text_dim, embed_dim)

  def features(self, x: torch.Tensor) -> torch.Tensor:
    h = self.conv_img(x)  # [b, nf, R, R]
    for block in self.blocks:
      h = block(h)
    return h  # [b, 8*nf, 4, 4]

  def logits(self, features: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
    b = features.shape[0]
    s = self.sent_proj(sent)[:, :, None, None].expand(b, self.cond_dim, 4, 4)
    h = lrelu(self.joint_conv(torch.cat([features, s.to(features.dtype)], dim=1)))
    return self.logit_conv(h).reshape(b).float()  # [b]

  def image_embedding(self, features: torch.Tensor) -> torch.Tensor:
    return self.image_proj(features.mean(dim=(2, 3))).float()

  def text_embedding(self, sent: torch.Tensor) -> torch.Tensor:
    return self.text_proj(sent).float()

  def forward(self, x: torch.Tensor, sent: torch.Tensor) -> dict[str, torch.Tensor]:
    feats = self.features(x)
    out = {"logits": self.logits(feats, sent)}
    if self.contrastive:
      out["image_embedding"] = self.image_embedding(feats)
      out["text_embedding"] = self.text_embedding(sent)
    return out


def build_from_config(cfg: Any, text_dim: int) -> tuple[Generator, Discriminator]:
  """The torch G and D for an llmimg_jax train config (as train.state.build_models builds them)."""
  m = cfg.model
  g = Generator(m.resolution, nf=m.nf_g, z_dim=m.z_dim, cond_dim=m.cond_dim,
                attn_resolutions=tuple(m.attn_resolutions), text_dim=text_dim)
  d = Discriminator(m.resolution, nf=m.nf_d, cond_dim=m.cond_dim,
                    contrastive=cfg.loss.contrastive_weight > 0, text_dim=text_dim)
  return g, d


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _torch_key(path: tuple[str, ...]) -> str:
  parts = []
  for p in path[:-1]:
    head, _, idx = p.rpartition("_")
    if p.startswith("attn") and p[4:].isdigit():
      parts += ["attns", p[4:]]
    elif p.startswith("block") and p[5:].isdigit():  # Generator: block0 -> blocks.0
      parts += ["blocks", p[5:]]
    elif head == "blocks" and idx.isdigit():  # Discriminator: blocks_0 -> blocks.0
      parts += ["blocks", idx]
    else:
      parts.append(p)
  leaf = {"kernel": "weight", "scale": "weight"}.get(path[-1], path[-1])
  return ".".join(parts + [leaf])


def flax_to_state_dict(params: Mapping) -> dict[str, torch.Tensor]:
  """Flax G or D params -> a state_dict for the twin torch module."""
  out = {}
  for path, value in _flatten(params).items():
    a = np.asarray(value, np.float32)
    if path[-1] == "kernel":
      a = a.T if a.ndim == 2 else a.transpose(3, 2, 0, 1)  # [in, out] -> [out, in]; HWIO -> OIHW
    out[_torch_key(path)] = torch.from_numpy(np.array(a, np.float32, order="C"))
  return out


def load_flax_params(module: nn.Module, params: Mapping) -> None:
  """Copies Flax params into `module`; every key must match in name and shape, both ways."""
  state = flax_to_state_dict(params)
  own = module.state_dict()
  missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
  bad = [f"{k}: flax {tuple(state[k].shape)} vs torch {tuple(own[k].shape)}"
         for k in set(own) & set(state) if state[k].shape != own[k].shape]
  if missing or unexpected or bad:
    raise ValueError(f"Flax params do not fit {type(module).__name__}: missing {missing}, "
                     f"unexpected {unexpected}, shape mismatches {bad}. Were both built from the "
                     "same config?")
  module.load_state_dict(state)


def load_flax_t5_encoder(module: nn.Module, params: Mapping) -> None:
  """Flax T5EncoderModel params ({'shared', 'encoder'}) -> a transformers T5EncoderModel."""
  from llmimg_jax.text.loading import hf_key_to_path
  flat = _flatten(params)
  state = {}
  for key in module.state_dict():
    path, transpose = hf_key_to_path(key)
    if key == "encoder.embed_tokens.weight":  # tied copy of shared.weight
      path, transpose = ("shared", "embedding"), False
    if path not in flat:
      raise ValueError(f"transformers key {key} has no Flax param {'/'.join(path)}: do the two "
                       "T5 configs match?")
    a = np.asarray(flat[path], np.float32)
    state[key] = torch.from_numpy(np.array(a.T if transpose else a, np.float32, order="C"))
  module.load_state_dict(state)


def count_params(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


def top_level_counts(module: nn.Module) -> dict[str, int]:
  """Parameter count per Flax top-level name (block0, attn16, blocks_0, ...)."""
  out: dict[str, int] = {}
  for name, p in module.named_parameters():
    parts = name.split(".")
    if parts[0] == "blocks":
      top = f"blocks_{parts[1]}" if isinstance(module, Discriminator) else f"block{parts[1]}"
    elif parts[0] == "attns":
      top = f"attn{parts[1]}"
    else:
      top = parts[0]
    out[top] = out.get(top, 0) + p.numel()
  return out
