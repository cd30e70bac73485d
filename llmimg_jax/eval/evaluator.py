"""A small CNN that reads a captioned_shapes image cell by cell: for each of the 3x3 cells,
whether an object is there, and its shape, colour and size.

Each cell is cropped around its centre with a margin (14 px at 32px) and read by the same small
network, CellNet. Two towers: the colour tower sees the crop's RGB and its difference from the
crop's border (the local background); the shape tower sees only that difference's magnitude,
scaled to [0, 1] per crop, so it cannot use colour to guess shape: the holdout split's (shape,
colour) pairs never occur in training. The per-cell features before the heads, concatenated over
cells, are the features of the in-domain FID.

Training reads cells, not images: each step takes `batch_size` occupied cells and a few empty
ones, so the compute goes to the objects (an image has 1-3 objects in 9 cells). Nearly all shape
errors are small circles read as hexagons and back (radius ~2.5 px at 32px): the information is
there (train and test accuracy rise together with more steps), it needs more examples and a shape
tower that keeps the full 14x14 resolution for two convolutions.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from llmimg_jax import cli
from llmimg_jax.data import shapes
from llmimg_jax.text.generator import check_seed
from llmimg_jax.train.mesh import compiler_options

log = logging.getLogger(__name__)

NUM_CELLS = 9
ATTRIBUTES = ("shape", "color", "size")
NUM_CLASSES = {"shape": len(shapes.SHAPES), "color": len(shapes.COLORS), "size": len(shapes.SIZES)}


_FLIP_CELLS = np.array([3 * r + (2 - c) for r in range(3) for c in range(3)])  # left-right


def crop_size(resolution: int) -> int:
  """Side of the square crop read per cell: the cell (R / 3) plus ~15% margin each side, even."""
  return 2 * round(resolution / 3 * 1.3 / 2)


def crop_cells(images: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
  """Images [b, R, R, 3] (numpy or jax, any dtype) -> crops [b, 9, P, P, 3] of the same dtype,
  centred on the cells (shifted inwards at the image border, symmetrically), row-major: cell
  c = 3 * row + col. A left-right flipped crop of cell c is the crop of cell _FLIP_CELLS[c] of the
  flipped image."""
  r, p = images.shape[1], crop_size(images.shape[1])
  starts = [min(max(round(r * (k + 0.5) / 3 - p / 2), 0), r - p) for k in range(3)]
  crops = [images[:, y:y + p, z:z + p] for y in starts for z in starts]
  return (jnp if isinstance(images, jax.Array) else np).stack(crops, 1)


def _ring_median(crops: jax.Array) -> jax.Array:
  """The median colour of each crop's one-pixel border: [..., P, P, 3] -> [..., 1, 1, 3]."""
  ring = jnp.concatenate([crops[..., 0, :, :], crops[..., -1, :, :], crops[..., 1:-1, 0, :],
                          crops[..., 1:-1, -1, :]], -2)  # [..., 4P - 4, 3]
  return jnp.median(ring, -2)[..., None, None, :]


class Tower(nn.Module):
  """[n, P, P, c] -> [n, F]: `full_convs` convolutions at full resolution, then strided ones
  down to <= 7x7, then two dense layers."""
  width: int
  feature_dim: int
  full_convs: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for _ in range(self.full_convs):
      x = nn.relu(nn.Conv(self.width, (3, 3))(x))
    width = self.width
    while x.shape[1] > 7:
      width *= 2
      x = nn.relu(nn.Conv(width, (3, 3), strides=2)(x))
      x = nn.relu(nn.Conv(width, (3, 3))(x))
    x = x.reshape(x.shape[0], -1)
    return nn.relu(nn.Dense(self.feature_dim)(nn.relu(nn.Dense(2 * self.feature_dim)(x))))


class CellNet(nn.Module):
  """One cell's crop: uint8 crops [n, P, P, 3] and their cell ids [n] -> logits present [n],
  shape/color/size [n, classes], and features [n, 2F].

  The shape tower keeps the crop's full resolution for two convolutions: small objects are ~5 px
  wide and a small circle and hexagon differ only in their anti-aliased edges."""
  width: int = 16
  shape_width: int = 32
  shape_full_convs: int = 2
  feature_dim: int = 32

  @nn.compact
  def __call__(self, crops: jax.Array, cells: jax.Array) -> dict[str, jax.Array]:
    x = crops.astype(jnp.float32) / 127.5 - 1.0  # [n, P, P, 3]
    diff = x - _ring_median(x)  # the object against its background
    magnitude = jnp.sqrt(jnp.sum(diff ** 2, -1, keepdims=True) + 1e-6)  # [n, P, P, 1]
    mask = magnitude / (jnp.max(magnitude, (1, 2, 3), keepdims=True) + 0.05)
    cell_emb = nn.Embed(NUM_CELLS, self.feature_dim, embedding_init=nn.initializers.normal(0.02),
                        name="cell_embedding")(cells)  # [n, F]
    color = Tower(self.width, self.feature_dim, name="color_tower")(
        jnp.concatenate([x, diff, mask], -1)) + cell_emb  # [n, F]
    shape = Tower(self.shape_width, self.feature_dim, self.shape_full_convs,
                  name="shape_tower")(mask) + cell_emb  # [n, F]
    both = jnp.concatenate([color, shape], -1)  # [n, 2F]
    return {"features": both,
            "present": nn.Dense(1, name="present_head")(both)[..., 0],
            "shape": nn.Dense(NUM_CLASSES["shape"], name="shape_head")(shape),
            "color": nn.Dense(NUM_CLASSES["color"], name="color_head")(color),
            "size": nn.Dense(NUM_CLASSES["size"], name="size_head")(both)}


class EvaluatorNet(nn.Module):
  """uint8 images [b, R, R, 3] -> per-cell logits [b, 9, classes] and features [b, 9 * 2F]: the
  CellNet (params["cell"]) on each of the nine crops, averaged over the crop and its left-right
  mirror (read as the mirrored cell) when `flip_average`."""
  flip_average: bool = True

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    b = images.shape[0]
    crops = crop_cells(images)  # [b, 9, P, P, 3]
    crops = crops.reshape((b * NUM_CELLS,) + crops.shape[2:])  # [b * 9, P, P, 3]
    cells = jnp.tile(jnp.arange(NUM_CELLS), b)  # [b * 9]
    net = CellNet(name="cell")
    out = net(crops, cells)
    if self.flip_average:
      mirrored = net(crops[:, :, ::-1], jnp.asarray(_FLIP_CELLS)[cells])
      out = {k: (v + mirrored[k]) / 2 for k, v in out.items()}
    out = {k: v.reshape((b, NUM_CELLS) + v.shape[1:]) for k, v in out.items()}
    out["features"] = out["features"].reshape(b, -1)  # [b, 9 * 2F]
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


def _loss(logits: dict[str, jax.Array], labels: dict[str, jax.Array],
          label_smoothing: float) -> jax.Array:
  """Per-crop logits and labels ([n] ids, -1 for the attributes of empty crops)."""
  present = labels["present"].astype(jnp.float32)  # [n]
  loss = optax.sigmoid_binary_cross_entropy(logits["present"], present).mean()
  for a in ATTRIBUTES:
    target = optax.smooth_labels(jax.nn.one_hot(jnp.maximum(labels[a], 0), NUM_CLASSES[a]),
                                 label_smoothing)
    ce = optax.softmax_cross_entropy(logits[a], target)  # [n]
    loss += (ce * present).sum() / jnp.maximum(present.sum(), 1.0)
  return loss


@dataclasses.dataclass
class TrainSettings:
  """Training on crops: each step reads `batch_size` occupied cells and `batch_size // 4` empty
  ones (presence is easy; shape is what needs the examples)."""
  steps: int = 4000
  batch_size: int = 64
  learning_rate: float = 3e-3
  label_smoothing: float = 0.1
  seed: int = 0

  def __post_init__(self):
    """batch_size 0 or -1 trained on one empty cell per step (and cached that evaluator), 2.5
    failed in a slice, steps=0 in optax, seed=2**32 made seed 0's key, a negative learning_rate
    or label_smoothing >= 1 trained nonsense: refused here, naming the field. NumPy numbers are
    kept as Python ones (the cache's meta is JSON)."""
    self.seed = check_seed(self.seed, "TrainSettings seed")  # an int: the cache's meta is JSON
    for name, what in (("steps", "Adam steps"), ("batch_size", "occupied cells per step")):
      value = getattr(self, name)
      if (number := cli.as_int(value)) is None or number < 1:
        raise ValueError(f"TrainSettings {name}={value!r} must be an int >= 1 ({what}).")
      setattr(self, name, number)  # a NumPy int is no JSON
    for name, rule, ok in (("learning_rate", "a finite number > 0 (Adam's peak rate)",
                            lambda v: 0 < v < float("inf")),
                           ("label_smoothing", "a number in [0, 1) (1 spreads every target "
                            "evenly over its classes)", lambda v: 0 <= v < 1)):
      value = getattr(self, name)
      try:  # a str or a bool is no rate; an array is not one
        real = None if isinstance(value, (str, bytes, bool)) or np.ndim(value) else float(value)
      except (TypeError, ValueError):
        real = None
      if real is None or not ok(real):  # nan fails both
        raise ValueError(f"TrainSettings {name}={value!r} must be {rule}.")
      setattr(self, name, real)  # a NumPy float is no JSON


def adam_step(net: CellNet, tx: optax.GradientTransformation, label_smoothing: float,
              params: Any, opt_state: Any, x: jax.Array, cells: jax.Array,
              labels: dict[str, jax.Array]) -> tuple[Any, Any, jax.Array]:
  """One step of train_net on crops x [n, P, P, 3] of `cells` [n] -> (params, opt_state, loss)."""
  loss, grads = jax.value_and_grad(
      lambda p: _loss(net.apply({"params": p}, x, cells), labels, label_smoothing))(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def train_net(images: np.ndarray, labels: dict[str, np.ndarray], settings: TrainSettings
              ) -> dict[str, Any]:
  """Adam with cosine decay on the cells of uint8 images [n, R, R, 3] with per-cell labels
  [n, 9] (cell_labels); random left-right flips. Returns EvaluatorNet params."""
  crops = crop_cells(np.asarray(images))  # [n, 9, P, P, 3] uint8
  crops = crops.reshape((-1,) + crops.shape[2:])  # [n * 9, P, P, 3]
  cells = np.tile(np.arange(NUM_CELLS), len(images))  # [n * 9]
  flat = {k: np.asarray(v).reshape(-1) for k, v in labels.items()}  # [n * 9]
  occupied, empty = np.flatnonzero(flat["present"] == 1), np.flatnonzero(flat["present"] == 0)
  net = CellNet()
  params = jax.jit(net.init)(jax.random.PRNGKey(settings.seed), jnp.asarray(crops[:2]),
                             jnp.asarray(cells[:2]))["params"]
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, settings.learning_rate, min(100, settings.steps // 10), settings.steps)
  tx = optax.adam(schedule)
  opt_state = tx.init(params)
  step = jax.jit(functools.partial(adam_step, net, tx, settings.label_smoothing),
                 compiler_options=compiler_options())
  rng = np.random.default_rng(settings.seed)
  t0, order = time.perf_counter(), np.zeros((0,), np.int64)
  num_empty = max(1, settings.batch_size // 4) if len(empty) else 0
  for i in range(settings.steps):
    if len(order) < settings.batch_size:
      order = np.concatenate([order, rng.permutation(occupied)])
    idx = np.concatenate([order[:settings.batch_size], rng.choice(empty, num_empty)])
    order = order[settings.batch_size:]
    flip = rng.random(len(idx)) < 0.5  # left-right: the crop of the mirrored cell
    x = crops[idx]  # [batch + empty, P, P, 3]
    x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    c = np.where(flip, _FLIP_CELLS[cells[idx]], cells[idx])
    y = {k: v[idx] for k, v in flat.items()}
    params, opt_state, loss = step(params, opt_state, x, c, y)
    if (i + 1) % 500 == 0:
      log.info("evaluator step %d/%d: loss %.4f (%.1fs)", i + 1, settings.steps, float(loss),
               time.perf_counter() - t0)
  return {"cell": params}


def read_cells(net: EvaluatorNet, params: Any, images: jax.Array) -> dict[str, jax.Array]:
  """apply_batched's work on one batch of uint8 images [b, R, R, 3]."""
  out = net.apply({"params": params}, images)
  pred = {"present": out["present"] > 0, "features": out["features"]}
  pred.update({a: jnp.argmax(out[a], -1).astype(jnp.int32) for a in ATTRIBUTES})
  return pred


@functools.cache  # compiler_options asks for the default device: not at import
def _read_cells_jitted():
  return jax.jit(read_cells, static_argnums=0, compiler_options=compiler_options())


def apply_batched(net: EvaluatorNet, params: Any, images: np.ndarray, batch_size: int = 256
                  ) -> dict[str, np.ndarray]:
  """{'present': bool [n, 9], 'shape'/'color'/'size': int [n, 9], 'features': [n, 9 * 2F]}."""
  cli.check_batch_size(batch_size)
  if not len(images):  # no batch to run: empty outputs of one image's shapes and dtypes
    # One image's: a reshape of 0 rows fails.
    one = jax.ShapeDtypeStruct((1,) + np.shape(images)[1:], np.asarray(images).dtype)
    shapes = jax.eval_shape(functools.partial(read_cells, net), params, one)
    return {k: np.zeros((0,) + v.shape[1:], v.dtype) for k, v in shapes.items()}
  outs = []
  for start in range(0, len(images), batch_size):
    chunk = np.asarray(images[start:start + batch_size])
    pad = batch_size - len(chunk) if len(images) > batch_size else 0  # one compiled shape
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    out = jax.device_get(_read_cells_jitted()(net, params, jnp.asarray(chunk)))
    outs.append({k: v[:len(v) - pad] for k, v in out.items()})
  return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def cell_accuracy(pred: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
  """Presence over all cells; shape/colour/size over the occupied cells."""
  occupied = labels["present"] == 1
  acc = {"present": float(np.mean(pred["present"] == occupied))}
  for a in ATTRIBUTES:
    acc[a] = float(np.mean(pred[a][occupied] == labels[a][occupied]))
  return acc
