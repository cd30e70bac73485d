"""A small CNN that reads a captioned_shapes image cell by cell: for each of the 3x3 cells,
whether an object is there, and its shape, colour and size.

Each cell is cropped around its centre with a margin (14 px at 32px) and read by the same small
network (nine training examples per image). Two towers: the colour tower sees the crop's RGB and
its difference from the crop's border (the local background); the shape tower sees only that
difference's magnitude, scaled to [0, 1] per crop, so it cannot use colour to guess shape: the
holdout split's (shape, colour) pairs never occur in training. The per-cell features before the
heads, concatenated over cells, are the features of the in-domain FID.
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


def crop_size(resolution: int) -> int:
  """Side of the square crop read per cell: the cell (R / 3) plus ~15% margin each side, even."""
  return 2 * round(resolution / 3 * 1.3 / 2)


def crop_cells(images: jax.Array) -> jax.Array:
  """uint8 [b, R, R, 3] -> float [b, 9, P, P, 3] in [-1, 1], crops centred on the cells (shifted
  inwards at the image border), row-major: cell c = 3 * row + col."""
  r, p = images.shape[1], crop_size(images.shape[1])
  starts = [min(max(round(r * (k + 0.5) / 3 - p / 2), 0), r - p) for k in range(3)]
  x = images.astype(jnp.float32) / 127.5 - 1.0
  crops = [x[:, y:y + p, z:z + p] for y in starts for z in starts]
  return jnp.stack(crops, 1)


def _ring_median(crops: jax.Array) -> jax.Array:
  """The median colour of each crop's one-pixel border: [..., P, P, 3] -> [..., 1, 1, 3]."""
  ring = jnp.concatenate([crops[..., 0, :, :], crops[..., -1, :, :], crops[..., 1:-1, 0, :],
                          crops[..., 1:-1, -1, :]], -2)  # [..., 4P - 4, 3]
  return jnp.median(ring, -2)[..., None, None, :]


class Tower(nn.Module):
  """[n, P, P, c] -> [n, F]: convolutions down to <= 7x7, then two dense layers."""
  width: int
  feature_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(nn.Conv(self.width, (3, 3))(x))
    width = self.width
    while x.shape[1] > 7:
      width *= 2
      x = nn.relu(nn.Conv(width, (3, 3), strides=2)(x))
      x = nn.relu(nn.Conv(width, (3, 3))(x))
    x = x.reshape(x.shape[0], -1)
    return nn.relu(nn.Dense(self.feature_dim)(nn.relu(nn.Dense(2 * self.feature_dim)(x))))


class EvaluatorNet(nn.Module):
  """uint8 images [b, R, R, 3] -> per-cell logits [b, 9, classes] and features [b, 9 * 2F]."""
  width: int = 16
  feature_dim: int = 32

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    b = images.shape[0]
    crops = crop_cells(images)  # [b, 9, P, P, 3]
    p = crops.shape[2]
    diff = crops - _ring_median(crops)  # [b, 9, P, P, 3]: the object against its background
    magnitude = jnp.sqrt(jnp.sum(diff ** 2, -1, keepdims=True) + 1e-6)  # [b, 9, P, P, 1]
    mask = magnitude / (jnp.max(magnitude, (2, 3, 4), keepdims=True) + 0.05)
    cell_emb = self.param("cell_embedding", nn.initializers.normal(0.02),
                          (NUM_CELLS, self.feature_dim))
    color_in = jnp.concatenate([crops, diff, mask], -1).reshape(b * NUM_CELLS, p, p, 7)
    color = Tower(self.width, self.feature_dim, name="color_tower")(color_in)
    shape = Tower(self.width, self.feature_dim, name="shape_tower")(
        mask.reshape(b * NUM_CELLS, p, p, 1))
    color = color.reshape(b, NUM_CELLS, -1) + cell_emb  # [b, 9, F]
    shape = shape.reshape(b, NUM_CELLS, -1) + cell_emb  # [b, 9, F]
    both = jnp.concatenate([color, shape], -1)  # [b, 9, 2F]
    return {"features": both.reshape(b, NUM_CELLS * 2 * self.feature_dim),
            "present": nn.Dense(1, name="present_head")(both)[..., 0],  # [b, 9]
            "shape": nn.Dense(NUM_CLASSES["shape"], name="shape_head")(shape),  # [b, 9, n]
            "color": nn.Dense(NUM_CLASSES["color"], name="color_head")(color),
            "size": nn.Dense(NUM_CLASSES["size"], name="size_head")(both)}


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
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, settings.learning_rate, min(100, settings.steps // 10), settings.steps)
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
    if (i + 1) % 100 == 0:
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
