"""Grain pipeline: determinism, host sharding, augmentation, checkpointing, global batches."""
from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest
from PIL import Image

from llmimg_jax.data import images, pipeline
from tests.data.utils import run_with_workers


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _iterator(cfg, tok, **kw):
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  kw.setdefault("batch_size_per_host", 16)
  kw.setdefault("seed", 0)
  return pipeline.make_iterator(cfg, tok, **kw)


def test_batch_format(shapes_cfg, tokenizer):
  cfg = shapes_cfg.copy_and_resolve_references()
  cfg.image_size = 16
  batch = next(_iterator(cfg, tokenizer, batch_size_per_host=8))
  assert batch["image"].dtype == np.uint8 and batch["image"].shape == (8, 16, 16, 3)
  assert batch["input_ids"].dtype == np.int32 and batch["input_ids"].shape == (8, 64)
  assert batch["attention_mask"].dtype == np.int32 and batch["attention_mask"].shape == (8, 64)
  assert batch["index"].shape == (8,)
  # The tokens decode to one of the record's captions (maybe truncated to 64 bytes).
  source = pipeline.load_source(cfg, "train")
  for text, index in zip(tokenizer.decode(batch["input_ids"]), batch["index"]):
    assert any(c.startswith(text) for c in source[int(index)]["captions"]), text
  # Each row is exactly the tokenizer's output (ids and mask) for one whole caption of its record.
  for i, index in enumerate(batch["index"]):
    tokens = tokenizer(source[int(index)]["captions"])
    assert any(np.array_equal(batch["input_ids"][i], ids) and
               np.array_equal(batch["attention_mask"][i], mask)
               for ids, mask in zip(tokens["input_ids"], tokens["attention_mask"])), i
  assert 0 < batch["attention_mask"].sum(1).min() < 64  # padding is masked


def test_same_seed_same_batches_different_seed_differs(shapes_cfg, tokenizer):
  a = _take(_iterator(shapes_cfg, tokenizer, seed=1), 3)
  b = _take(_iterator(shapes_cfg, tokenizer, seed=1), 3)
  c = _take(_iterator(shapes_cfg, tokenizer, seed=2), 3)
  _assert_same(a, b)
  assert not all(np.array_equal(x["index"], y["index"]) for x, y in zip(a, c))


def test_neighbouring_seeds_do_not_share_epoch_orders(shapes_cfg, tokenizer):
  """grain shuffles epoch e with its seed + e: seeds 1 and 0 would read the same orders one epoch
  apart, and two records' crops and flips from the same RNG."""
  def epochs(seed):
    it = _iterator(shapes_cfg, tokenizer, batch_size_per_host=64, seed=seed)  # 256 records
    return [np.concatenate([b["index"] for b in _take(it, 4)]) for _ in range(3)]

  zero, one = epochs(0), epochs(1)
  assert not any(np.array_equal(a, b) for a in zero for b in one)
  assert len({pipeline.sampler_seed(s) for s in range(1000)}) == 1000
  assert all(0 <= pipeline.sampler_seed(s) < 2**32 for s in (0, 2**32 - 1))


def test_two_hosts_get_disjoint_shards_covering_the_split(shapes_cfg, tokenizer):
  seen = []
  for host in (0, 1):
    it = _iterator(shapes_cfg, tokenizer, seed=5, num_epochs=1, process_index=host,
                   process_count=2)
    seen.append(np.concatenate([b["index"] for b in it]))
  assert len(seen[0]) == len(seen[1]) == 128
  assert not set(seen[0]) & set(seen[1])
  assert sorted(np.concatenate(seen)) == list(range(256))


def test_infinite_by_default_and_epochs_reshuffle(shapes_cfg, tokenizer):
  it = _iterator(shapes_cfg, tokenizer, batch_size_per_host=64)
  epochs = [np.concatenate([b["index"] for b in _take(it, 4)]) for _ in range(2)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(256))
  assert not np.array_equal(epochs[0], epochs[1])
  ordered = np.concatenate([b["index"] for b in _iterator(
      shapes_cfg, tokenizer, shuffle=False, num_epochs=1, batch_size_per_host=64)])
  assert list(ordered) == list(range(256))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_restore_mid_epoch_gives_identical_batches(shapes_cfg, tokenizer, num_workers):
  cfg = shapes_cfg.copy_and_resolve_references()
  cfg.num_workers = num_workers
  cfg.random_crop = 0.8
  cfg.random_flip = True
  it = _iterator(cfg, tokenizer, seed=3)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 4)
  resumed = _iterator(cfg, tokenizer, seed=3)
  resumed.set_state(state)
  _assert_same(_take(resumed, 4), expected)


def test_the_read_buffer_holds_reads_ahead_and_leaves_the_batches_alone(shapes_cfg, tokenizer):
  """data.read_buffer_size: grain's reads held ahead, by default two per read thread, not grain's
  500 (for every record it returns, grain checks each buffered read; benchmarks/RESULTS_data.md).
  The batches are the same whatever it holds."""
  cfg = shapes_cfg.copy_and_resolve_references()
  cfg.random_crop, cfg.random_flip = 0.8, True
  default = pipeline._read_options(cfg)
  assert (default.num_threads, default.prefetch_buffer_size) == (16, 32)  # grain's 16 threads
  cfg.read_threads = 3
  assert pipeline._read_options(cfg).prefetch_buffer_size == 6
  cfg.read_buffer_size = 500
  given = pipeline._read_options(cfg)
  assert (given.num_threads, given.prefetch_buffer_size) == (3, 500)
  batches = _take(_iterator(cfg, tokenizer, seed=3), 20)  # 320 records: past an epoch
  cfg.read_threads = cfg.read_buffer_size = 0
  _assert_same(_take(_iterator(cfg, tokenizer, seed=3), 20), batches)


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_workers_outlive_a_signal_to_the_whole_job(shapes_cfg, tokenizer, signum):
  """scancel or `kill -TERM -PGID` also signals grain's workers, as Ctrl-C in a terminal does (a
  KeyboardInterrupt traceback from each worker, leaked shared memory); the main process, which
  saves after the current step, must still get its batches."""
  import multiprocessing
  import signal
  cfg = shapes_cfg.copy_and_resolve_references()
  cfg.num_workers = 2
  before = {p.pid for p in multiprocessing.active_children()}
  it = _iterator(cfg, tokenizer, seed=3)
  _take(it, 2)  # the workers run
  workers = [p for p in multiprocessing.active_children() if p.pid not in before]
  assert len(workers) == 2
  for worker in workers:
    os.kill(worker.pid, getattr(signal, signum))
  time.sleep(1.0)
  assert all(w.is_alive() for w in workers)
  assert len(_take(it, 4)) == 4  # more than the workers had buffered


def test_closing_an_iterator_stops_its_workers_and_frees_their_batches(shapes_cfg):
  """grain's workers hand batches over in shared memory; those still buffered when the process
  ends were reported at exit as leaked (multiprocessing's resource_tracker warning, at the end of
  every training run with data.num_workers > 0; google/grain#1031). close_iterator frees them."""
  result = run_with_workers(shapes_cfg, """
      batches = [next(it) for _ in range(3)]
      workers = multiprocessing.active_children()
      del batches  # as a training step drops its batch
      pipeline.close_iterator(it)
      pipeline.close_iterator(it)  # a second close does nothing
      print("workers", len(workers), "alive", sum(w.is_alive() for w in workers), flush=True)
  """)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "workers 2 alive 0" in result.stdout, result.stdout
  assert "leaked shared_memory" not in result.stderr, result.stderr[-3000:]


def test_orbax_checkpoint_roundtrip(shapes_cfg, tokenizer, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  import grain
  it = _iterator(shapes_cfg, tokenizer, seed=4)
  _take(it, 2)
  checkpointer = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
  checkpointer.save(tmp_path / "data_state", args=grain.checkpoint.CheckpointSave(it))
  expected = _take(it, 2)
  resumed = _iterator(shapes_cfg, tokenizer, seed=4)
  checkpointer.restore(tmp_path / "data_state", args=grain.checkpoint.CheckpointRestore(resumed))
  _assert_same(_take(resumed, 2), expected)


def test_augment_flip_swaps_left_and_right():
  image = np.zeros((8, 8, 3), np.uint8)
  image[:, :4] = 255  # left half white
  aug = pipeline.Augment(image_size=8, flip=True)
  element = {"image": image, "captions": ["a star left of a circle"], "index": np.int64(0)}
  outs = [aug.random_map(element, np.random.default_rng(s)) for s in range(2000)]
  flipped = [o for o in outs if o["image"][0, 0, 0] == 0]
  kept = [o for o in outs if o["image"][0, 0, 0] == 255]
  assert len(flipped) + len(kept) == 2000 and abs(len(flipped) - 1000) < 100  # half, +-4.5 sd
  assert all(o["caption"] == "a star right of a circle" for o in flipped)
  assert all(o["caption"] == "a star left of a circle" for o in kept)


def test_augment_random_crop_and_resize():
  """Each random crop is a square window of side >= crop_min * the short side, resized; windows
  and captions vary with the rng, and every caption of a record is drawn."""
  y, x = np.mgrid[0:30, 0:40]
  image = np.stack([y * 8, x * 6, (x * y) % 256], -1).astype(np.uint8)  # every window differs
  crop = pipeline.Augment(image_size=16, crop_min=0.5)
  centre = pipeline.Augment(image_size=16)
  element = {"image": image, "captions": ["x", "y", "z"], "index": np.int64(0)}
  windows, captions = set(), set()
  for s in range(30):
    out = crop.random_map(element, np.random.default_rng(s))
    captions.add(out["caption"])
    if s < 8:
      found = [(side, y0, x0) for side in range(15, 31) for y0 in range(31 - side)
               for x0 in range(41 - side)
               if np.array_equal(out["image"], images.resize(
                   np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side]), 16))]
      assert len(found) == 1, f"seed {s}: not one square window of side 15-30"
      windows.add(found[0])
  assert len(windows) >= 6 and len({side for side, _, _ in windows}) >= 4, windows
  assert captions == {"x", "y", "z"}
  np.testing.assert_array_equal(centre.random_map(element, np.random.default_rng(0))["image"],
                                images.resize(np.ascontiguousarray(image[:, 5:35]), 16))


def test_random_crop_windows_stay_inside_and_reach_every_edge(monkeypatch):
  """Random crops (resize made the identity) of a 30x40 image whose pixels hold their (y, x):
  every window lies inside the image, and some touch each of its four edges."""
  monkeypatch.setattr(pipeline, "resize", lambda image, size: image)
  h, w = 30, 40
  y, x = np.mgrid[0:h, 0:w]
  element = {"image": np.stack([y, x, y * 0], -1).astype(np.uint8), "captions": ["x"],
             "index": np.int64(0)}
  crop = pipeline.Augment(image_size=16, crop_min=0.5)
  edges = set()
  for s in range(300):
    out = crop.random_map(element, np.random.default_rng(s))["image"].astype(int)
    side, (y0, x0) = out.shape[0], out[0, 0, :2]
    assert out.shape == (side, side, 3) and 15 <= side <= 30, out.shape
    assert 0 <= y0 <= h - side and 0 <= x0 <= w - side, (y0, x0, side)
    assert out[-1, -1, :2].tolist() == [y0 + side - 1, x0 + side - 1]
    edges |= {e for e, hit in (("top", y0 == 0), ("bottom", y0 + side == h), ("left", x0 == 0),
                               ("right", x0 + side == w)) if hit}
  assert edges == {"top", "bottom", "left", "right"}


def test_store_size_below_image_size_is_refused(tmp_path):
  Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
  (tmp_path / "captions.jsonl").write_text('{"file": "a.png", "caption": "x"}\n')
  cfg = pipeline.default_data_config()
  cfg.update(name="captioned_folder", folder=str(tmp_path), data_dir=str(tmp_path / "tfds"),
             image_size=8, store_size=4)
  with pytest.raises(ValueError, match=r"data.store_size=4 < data.image_size=8: images would be "
                                       r"upsampled"):
    pipeline.load_source(cfg)
  assert not (tmp_path / "tfds").exists()
  cfg.store_size = 8  # equal is fine
  pipeline.validate_data_config(cfg)


def test_config_validation_errors(shapes_cfg, tmp_path):
  cfg = shapes_cfg.copy_and_resolve_references()
  cfg.name = "imagenet"
  with pytest.raises(ValueError, match="Unknown dataset data.name='imagenet'"):
    pipeline.load_source(cfg)
  cfg = shapes_cfg.copy_and_resolve_references()
  cfg.config = "17"
  with pytest.raises(ValueError, match=r"data.config: captioned_shapes has no config '17'; pick"):
    pipeline.load_source(cfg)
  cfg = shapes_cfg.copy_and_resolve_references()
  cfg.image_size = 64
  with pytest.raises(ValueError, match=r"stores 32px images.*'64', '64_small'"):
    pipeline.load_source(cfg)
  cfg.image_size = 256
  with pytest.raises(ValueError, match=r"stores 32px images; no config stores 256px images \(the "
                                       r"largest, '128', stores 128px\), so set"):
    pipeline.load_source(cfg)
  cfg = shapes_cfg.copy_and_resolve_references()
  cfg.data_dir = "~nosuchuser_llmimg/tfds"  # was a folder of that name in the current directory
  with pytest.raises(ValueError, match=r"data\.data_dir '~nosuchuser_llmimg/tfds': "
                                       r"~nosuchuser_llmimg is no user's home directory"):
    pipeline.validate_data_config(cfg)
  for key in ("data_dir", "folder"):  # the records writer's TypeError; TFDS's encode error
    cfg = shapes_cfg.copy_and_resolve_references()
    cfg[key] = str(tmp_path / os.fsdecode(b"dd_\xe9"))
    with pytest.raises(ValueError) as refused:
      pipeline.validate_data_config(cfg)
    assert str(refused.value) == (f"data.{key}={cfg[key]!r} is not UTF-8, which TFDS's build "
                                  "cannot name; rename the folder to a UTF-8 name and pass that.")
  cfg = shapes_cfg.copy_and_resolve_references()
  with pytest.raises(ValueError, match="no split 'validation'"):
    pipeline.load_source(cfg, "validation")
  cfg.name = "captioned_folder"
  cfg.folder = str(tmp_path / "missing")
  with pytest.raises(ValueError, match="data.folder"):
    pipeline.load_source(cfg)


def test_captioned_folder_through_the_pipeline(tmp_path, tokenizer):
  folder = tmp_path / "imgs"
  folder.mkdir()
  lines = []
  for i in range(6):
    Image.new("RGB", (30 + i, 20), (40 * i, 0, 0)).save(folder / f"{i}.png")
    lines.append(f'{{"file": "{i}.png", "captions": ["red {i}", "crimson {i}"]}}')
  (folder / "captions.jsonl").write_text("\n".join(lines))
  cfg = pipeline.default_data_config()
  cfg.update(name="captioned_folder", folder=str(folder), data_dir=str(tmp_path / "tfds"),
             image_size=8, store_size=12)
  batches = list(_iterator(cfg, tokenizer, batch_size_per_host=3, num_epochs=1))
  assert len(batches) == 2 and batches[0]["image"].shape == (3, 8, 8, 3)
  cfg.num_workers = 2  # each worker would batch its 3 records alone and keep one batch
  with pytest.raises(ValueError, match="num_epochs=1 with data.num_workers=2: .* drop"):
    _iterator(cfg, tokenizer, batch_size_per_host=3, num_epochs=1)
  source = pipeline.load_source(cfg)
  assert source[0]["image"].shape == (12, 12, 3)


@pytest.mark.parametrize("hosts", [2, 4])
def test_hosts_slices_concatenate_to_the_one_process_batches(shapes_cfg, tokenizer, hosts):
  """The global batches (order, records, augmentation, tokens) do not depend on the host count."""
  cfg = shapes_cfg.copy_and_resolve_references()
  cfg.random_crop, cfg.random_flip = 0.7, True
  single = _take(_iterator(cfg, tokenizer, seed=6, batch_size_per_host=16), 10)
  per_host = [_take(_iterator(cfg, tokenizer, seed=6, batch_size_per_host=16 // hosts,
                              process_index=h, process_count=hosts), 10) for h in range(hosts)]
  merged = [{k: np.concatenate([p[i][k] for p in per_host]) for k in single[i]}
            for i in range(10)]
  _assert_same(merged, single)
  # Hosts read different records (no duplicated work).
  assert not set(per_host[0][0]["index"]) & set(per_host[1][0]["index"])


def test_a_host_resumes_its_slice_from_a_checkpointed_state(shapes_cfg, tokenizer):
  it = _iterator(shapes_cfg, tokenizer, seed=2, batch_size_per_host=8, process_index=1,
                 process_count=2)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 2)
  resumed = _iterator(shapes_cfg, tokenizer, seed=2, batch_size_per_host=8, process_index=1,
                      process_count=2)
  resumed.set_state(state)
  _assert_same(_take(resumed, 2), expected)
  other_host = _iterator(shapes_cfg, tokenizer, seed=2, batch_size_per_host=8, process_index=0,
                         process_count=2)
  with pytest.raises(ValueError, match="Sampler in checkpoint does not match"):
    other_host.set_state(state)


def test_long_captions_are_warned_about_once_not_every_batch(caplog):
  """A folder of long captions logged a truncation warning for every batch (every step)."""
  import logging
  from llmimg_jax.text import load_tokenizer
  tokenize = pipeline.Tokenize(load_tokenizer(None, max_length=8))
  batch = {"image": np.zeros((2, 4, 4, 3), np.uint8), "index": np.arange(2),
           "caption": np.array(["a short one", "a caption of more than eight bytes"])}
  with caplog.at_level(logging.WARNING):
    for _ in range(3):
      out = tokenize.map(batch)
  assert [r.getMessage() for r in caplog.records] == [  # 34 bytes + EOS
      "Captions longer than config.text.max_length=8 tokens are truncated (one had 35 tokens); "
      "said once, for the first such batch. Raise config.text.max_length to keep them whole."]
  assert out["input_ids"].shape == (2, 8) and out["attention_mask"][1].all()


class _FirstRecords:
  """The first `n` records of a source."""

  def __init__(self, source, n: int):
    self.source, self.n = source, n

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i):
    return self.source[i]

  def __repr__(self) -> str:
    return f"the first {self.n} records"


def test_a_training_stream_over_fewer_records_than_a_batch_warns(shapes_cfg, tokenizer, caplog):
  """30 images with batch 64 trained without a word, every batch holding images twice (and D's
  "mismatched" pairs sometimes an image with its own caption)."""
  source = pipeline.load_source(shapes_cfg, "train")
  with caplog.at_level("WARNING", logger="llmimg_jax.data.pipeline"):
    batch = next(_iterator(shapes_cfg, tokenizer, source=_FirstRecords(source, 5),
                           batch_size_per_host=4, process_count=2))
  assert len(batch["index"]) == 4 and set(batch["index"]) <= set(range(5))
  assert ("the first 5 records has 5 records, fewer than one global batch of 8 (2 host(s) x 4): "
          "every batch repeats records") in caplog.text
  caplog.clear()
  with caplog.at_level("WARNING", logger="llmimg_jax.data.pipeline"):
    next(_iterator(shapes_cfg, tokenizer, source=_FirstRecords(source, 8), batch_size_per_host=8))
  assert "fewer than one global batch" not in caplog.text

