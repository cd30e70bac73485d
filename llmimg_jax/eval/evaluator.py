"""A small CNN that reads a captioned_shapes image cell by cell: for each of the 3x3 cells,
whether an object is there, and its shape, colour and size.

The image is bilinearly resized to S = 3 * 2^k >= R (32 -> 48, 64 -> 96, 128 -> 192) and strided
convolutions reduce it to a 3x3 map, one position per cell, so every cell's head is shared and
each training image teaches it nine times. The per-cell features before the heads, concatenated
over cells, are the features of the in-domain FID.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from llmimg_jax.data import shapes

log = logging.getLogger(__name__)

NUM_CELLS = 9
ATTRIBUTES = ("shape", "color", "size")
NUM_CLASSES = {"shape": len(shapes.SHAPES), "color": len(shapes.COLORS), "size": len(shapes.SIZES)}


def input_size(resolution: int) -> int:
  """The side the image is resized to: the smallest 3 * 2^k >= resolution."""
  size = 3
  while size < resolution:
    size *= 2
  return size


class EvaluatorNet(nn.Module):
  """uint8 images [b, R, R, 3] -> per-cell logits and features."""
  width: int = 32
  feature_dim: int = 32

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    size = input_size(images.shape[1])
    x = images.astype(jnp.float32) / 127.5 - 1.0
    x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear")  # [b, S, S, 3]
    x = nn.relu(nn.Conv(self.width, (3, 3))(x))
    width = self.width
    while x.shape[1] > 3:
      width = min(width * 2, 128)
      x = nn.relu(nn.Conv(width, (3, 3), strides=2)(x))
      x = nn.relu(nn.Conv(width, (3, 3))(x))
    b = x.shape[0]
    x = x.reshape(b, NUM_CELLS, width)  # [b, 9, C], row-major cells: c = 3 * row + col
    # Cell identity matters (a cell's content looks different at the border): add an embedding.
    x = x + self.param("cell_embedding", nn.initializers.normal(0.02), (NUM_CELLS, width))
    feats = nn.relu(nn.Dense(self.feature_dim)(nn.relu(nn.Dense(width)(x))))  # [b, 9, F]
    out = {"features": feats.reshape(b, NUM_CELLS * self.feature_dim),
           "present": nn.Dense(1)(feats)[..., 0]}  # [b, 9]
    for name, n in NUM_CLASSES.items():
      out[name] = nn.Dense(n, name=f"{name}_head")(feats)  # [b, 9, n]
    return out


def cell_labels(gt: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Per-object ground truth (shape/color/size/cell [n, MAX_OBJECTS], -1 padded) -> per-cell
  labels [n, 9]: present (0/1) and shape/color/size ids (-1 in empty cells)."""
  cell = np.asarray(gt["cell"])
  n = cell.shape[0]
  out = {"present": np.zeros((n, NUM_CELLS), np.int32)}
  out.update({a: np.full((n, NUM_CELLS), -1, np.int32) for a in ATTRIBUTES})
  rows, slots = np.nonzero(cell >= 0)
  cells = cell[rows, slots]
  out["present"][rows, cells] = 1
  for a in ATTRIBUTES:
    out[a][rows, cells] = np.asarray(gt[a])[rows, slots]
  return out


def _loss(logits: dict[str, jax.Array], labels: dict[str, jax.Array]) -> jax.Array:
  present = labels["present"].astype(jnp.float32)  # [b, 9]
  loss = optax.sigmoid_binary_cross_entropy(logits["present"], present).mean()
  for a in ATTRIBUTES:
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[a], jnp.maximum(labels[a], 0))
    loss += (ce * present).sum() / jnp.maximum(present.sum(), 1.0)
  return loss


@dataclasses.dataclass
class TrainSettings:
  steps: int = 1500
  batch_size: int = 64
  learning_rate: float = 3e-3
  seed: int = 0


def train_net(images: np.ndarray, labels: dict[str, np.ndarray], settings: TrainSettings,
              net: EvaluatorNet | None = None):
  """Adam with cosine decay on uint8 images [n, R, R, 3]; returns the params."""
  net = net or EvaluatorNet()
  key = jax.random.PRNGKey(settings.seed)
  params = jax.jit(net.init)(key, jnp.asarray(images[:2]))["params"]
  schedule = optax.warmup_cosine_decay_schedule(0.0, settings.learning_rate, 100, settings.steps)
  tx = optax.adam(schedule)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(lambda p: _loss(net.apply({"params": p}, x), y))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(settings.seed)
  n, t0, order = len(images), time.perf_counter(), np.zeros((0,), np.int64)
  for i in range(settings.steps):
    if len(order) < settings.batch_size:
      order = np.concatenate([order, rng.permutation(n)])
    idx, order = order[:settings.batch_size], order[settings.batch_size:]
    x = images[idx]
    if rng.random() < 0.5:  # left-right flip: mirror the cells' columns too
      x = x[:, :, ::-1]
      perm = _FLIP_CELLS
    else:
      perm = np.arange(NUM_CELLS)
    y = {k: v[idx][:, perm] for k, v in labels.items()}
    params, opt_state, loss = step(params, opt_state, x, y)
    if (i + 1) % 500 == 0:
      log.info("evaluator step %d/%d: loss %.4f (%.1fs)", i + 1, settings.steps, float(loss),
               time.perf_counter() - t0)
  return params


_FLIP_CELLS = np.array([3 * r + (2 - c) for r in range(3) for c in range(3)])


@functools.partial(jax.jit, static_argnums=0)
def _apply(net: EvaluatorNet, params, images: jax.Array) -> dict[str, jax.Array]:
  out = net.apply({"params": params}, images)
  pred = {"present": out["present"] > 0, "features": out["features"]}
  pred.update({a: jnp.argmax(out[a], -1).astype(jnp.int32) for a in ATTRIBUTES})
  return pred


def apply_batched(net: EvaluatorNet, params, images: np.ndarray, batch_size: int = 256
                  ) -> dict[str, np.ndarray]:
  """{'present': bool [n, 9], 'shape'/'color'/'size': int [n, 9], 'features': [n, 9 * F]}."""
  outs = []
  for start in range(0, len(images), batch_size):
    chunk = np.asarray(images[start:start + batch_size])
    pad = batch_size - len(chunk) if len(images) > batch_size else 0  # one compiled shape
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    out = jax.device_get(_apply(net, params, jnp.asarray(chunk)))
    outs.append({k: v[:len(v) - pad] for k, v in out.items()})
  return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def cell_accuracy(pred: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
  """Presence over all cells; shape/colour/size over the occupied cells."""
  occupied = labels["present"] == 1
  acc = {"present": float(np.mean(pred["present"] == occupied))}
  for a in ATTRIBUTES:
    acc[a] = float(np.mean(pred[a][occupied] == labels[a][occupied]))
  return acc
