"""images.load_image in several threads at once (captioned_folder's build decodes so): PIL's
process-wide settings that it changes while decoding are those of the program after, and each
call reads them as it would alone."""
from __future__ import annotations

import contextlib
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFile, PngImagePlugin

from llmimg_jax.data import decode_guards, images


def _save_cut_jpeg(path) -> None:
  noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  Image.fromarray(noise).save(path)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def _outcome(path) -> str:
  """load_image(path, 8)'s outcome: "stored", or the reason the image is skipped."""
  try:
    images.load_image(str(path), 8)
  except images.SkipImage as e:
    return e.reason
  return "stored"


def test_a_truncated_image_is_skipped_while_another_thread_ends_its_load(tmp_path, monkeypatch):
  """Each call saved the program's LOAD_TRUNCATED_IMAGES (True here), set it off and restored it:
  a call starting while another decoded saved 'off', and the other's restore turned it on while
  the first decoded, so its truncated file was padded into an image, and the program was left
  with 'off'."""
  monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # the calling program's choice
  good, cut = tmp_path / "good.png", tmp_path / "cut.jpg"
  Image.new("RGB", (8, 8)).save(good)
  _save_cut_jpeg(cut)
  good_loading, cut_loading, good_done = threading.Event(), threading.Event(), threading.Event()
  load = ImageFile.ImageFile.load

  def paused_load(img):  # the good file's load waits for the cut one's to start, which waits
    if img.filename == str(good):  # for the good file's call to end
      good_loading.set()
      assert cut_loading.wait(10)
    elif img.filename == str(cut) and not cut_loading.is_set():
      cut_loading.set()
      assert good_done.wait(10)
    return load(img)

  monkeypatch.setattr(ImageFile.ImageFile, "load", paused_load)
  with ThreadPoolExecutor(2) as pool:
    first = pool.submit(images.load_image, str(good), 8)
    assert good_loading.wait(10)
    second = pool.submit(images.load_image, str(cut), 8)
    first.result(timeout=10)
    good_done.set()
    with pytest.raises(images.SkipImage, match="truncated"):
      second.result(timeout=10)
  assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_threads_opening_images_leave_the_warning_filters_as_they_were(tmp_path, monkeypatch):
  """Each call turned PIL's DecompressionBombWarning into an error within catch_warnings (which
  saves and restores the process's filters) outside the lock it opens under: a second call
  entering while the first opened saved the first's error filter and restored it last, so
  the program's later opens of a large image raised."""
  paths = [tmp_path / f"{i}.png" for i in range(2)]
  for path in paths:
    Image.new("RGB", (8, 8)).save(path)
  opening, second_opening, first_done = (threading.Event() for _ in range(3))
  real_open = Image.open

  def paused_open(fp, *args, **kwargs):  # the second call starts within the first, ends after it
    if fp == str(paths[0]):
      opening.set()
      assert second_opening.wait(10)
    else:
      second_opening.set()
      assert first_done.wait(10)
    return real_open(fp, *args, **kwargs)

  monkeypatch.setattr(Image, "open", paused_open)
  with warnings.catch_warnings():
    before = list(warnings.filters)
    with ThreadPoolExecutor(2) as pool:
      first = pool.submit(images.load_image, str(paths[0]), 8)
      assert opening.wait(10)
      second = pool.submit(images.load_image, str(paths[1]), 8)
      first.result(timeout=10)
      first_done.set()
      second.result(timeout=10)
    assert warnings.filters == before


def test_warning_filters_set_by_another_thread_while_an_image_opens_are_its_own(
    tmp_path, monkeypatch):
  """The first open's catch_warnings saved the process's filters and the last one's end put them
  back: a filter the program set meanwhile was lost, and a catch_warnings of another thread that
  spanned the decode's end lost its own filters then, and put back at its end those saved inside
  the decode's, DecompressionBombWarning an error for the rest of the program."""
  path = tmp_path / "a.png"
  Image.new("RGB", (8, 8)).save(path)
  opening, release, real_open = threading.Event(), threading.Event(), Image.open

  def paused_open(fp, *args, **kwargs):
    opening.set()
    assert release.wait(10)
    return real_open(fp, *args, **kwargs)

  monkeypatch.setattr(Image, "open", paused_open)
  with warnings.catch_warnings():
    before = list(warnings.filters)
    with ThreadPoolExecutor(1) as pool:
      load = pool.submit(images.load_image, str(path), 8)
      assert opening.wait(10)
      warnings.simplefilter("ignore", UserWarning)  # the program's, while the image opens
      with warnings.catch_warnings():  # another part of the program, until after the decode
        warnings.simplefilter("ignore", DeprecationWarning)
        release.set()
        assert load.result(timeout=10)[0].shape == (8, 8, 3)
        assert warnings.filters[:2] == [("ignore", None, DeprecationWarning, None, 0),
                                        ("ignore", None, UserWarning, None, 0)]
    assert warnings.filters == [("ignore", None, UserWarning, None, 0), *before]


def test_a_filter_another_thread_adds_as_the_error_filter_is_taken_out_stays(tmp_path):
  """The error filter is taken out in one step: found by index and then deleted, another thread's
  simplefilter between the two (its filter put first) had the deletion take that filter out, lost
  to the program (or, the lists in use differing, the error left on)."""
  path = tmp_path / "a.png"
  Image.new("RGB", (8, 8)).save(path)
  theirs = ("ignore", None, UserWarning, None, 0)

  came = []

  class Filters(list):  # warnings.filters: another thread's simplefilter as one is taken out
    def _theirs_first(self) -> None:
      if not came:
        came.append(theirs)
        warnings.simplefilter("ignore", UserWarning)  # itself a remove, then an insert

    def __delitem__(self, index):  # after the index was found
      self._theirs_first()
      super().__delitem__(index)

    def remove(self, value):  # before the one step
      self._theirs_first()
      super().remove(value)

  with warnings.catch_warnings():
    warnings.filters = Filters(warnings.filters)
    before = list(warnings.filters)
    assert images.load_image(str(path), 8)[0].shape == (8, 8, 3)
    assert warnings.filters == [theirs, *before]


def test_a_build_s_images_come_in_order_decoded_a_bounded_number_ahead(monkeypatch):
  """A folder build decodes in threads (images.load_images): the images (or their skips) come
  in the order of their paths, whichever decode ends first, and at most four per thread are
  decoded ahead of the one taken (a folder of 100k photos is not held in memory)."""
  monkeypatch.setattr(images, "_decode_threads", lambda: 3)
  started = []

  def load_image(path, size, max_pixels):
    started.append(path)
    time.sleep(0.002 * (int(path) % 4))  # later paths often end first
    if int(path) % 5 == 0:
      raise images.SkipImage("corrupt", path)
    return np.full((size, size, 3), int(path), np.uint8), [f"note {path}"]

  monkeypatch.setattr(images, "load_image", load_image)
  results = images.load_images([str(i) for i in range(60)], 2, None)
  for i, result in enumerate(results):
    if i % 5 == 0:
      assert isinstance(result, images.SkipImage) and str(result) == f"corrupt: {i}"
    else:
      np.testing.assert_array_equal(result[0], np.full((2, 2, 3), i))
      assert result[1] == [f"note {i}"]
    time.sleep(0.005)  # time to decode further ahead
    assert len(started) <= i + 2 + 4 * 3
  assert len(started) == 60


def test_an_image_opens_as_it_would_alone_while_another_thread_decodes(tmp_path, monkeypatch):
  """PIL reads LOAD_TRUNCATED_IMAGES while it opens too (on: a broken checksum of a PNG's text
  chunk is let through), and another thread's decode turns it off until it ends: with the
  program's 'on', such a PNG was stored when opened alone and skipped when another thread was
  decoding, so a folder build in threads stored it or not by chance."""
  monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # the calling program's choice
  path = tmp_path / "bad_text_checksum.png"
  info = PngImagePlugin.PngInfo()
  info.add_text("Comment", "a camera's note")
  Image.new("RGB", (8, 8), (200, 10, 10)).save(path, pnginfo=info)
  data = bytearray(path.read_bytes())
  at = data.index(b"tEXt")
  data[at + 4 + int.from_bytes(data[at - 4:at], "big")] ^= 0xFF  # its checksum's first byte
  path.write_bytes(bytes(data))
  alone = _outcome(path)
  with decode_guards.truncated_images_refused():  # as while another thread loads an image
    while_another_decodes = _outcome(path)
  assert (alone, while_another_decodes) == ("unreadable", "unreadable")
  assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def _waiting() -> int:
  """The decodes waiting in decode_memory's queue, read under its lock: one let in at once is
  appended and removed within one hold of it, and was seen waiting when read without (so a
  decode held until another waits ended before the one that was starting beside it)."""
  with decode_guards._DECODE_MEMORY:
    return len(decode_guards._decode_queue)


def _until(condition) -> None:
  deadline = time.monotonic() + 10
  while not condition():
    assert time.monotonic() < deadline
    time.sleep(0.01)


def test_threads_open_images_at_once_under_the_same_pixel_limit(tmp_path, monkeypatch):
  """images._pil_pixel_limit held one lock across Image.open: a folder build's threads opened their
  files one at a time, a network round trip each on NFS or gcsfuse. Two opens now overlap (each
  waits for the other to have started), and PIL's limit is the program's again after."""
  paths = [str(tmp_path / f"{i}.png") for i in range(2)]
  both_opening = threading.Barrier(2, timeout=10)
  real_open = Image.open

  def open_together(fp, *args, **kwargs):
    both_opening.wait()  # BrokenBarrierError if the other open cannot start meanwhile
    return real_open(fp, *args, **kwargs)

  for path in paths:
    Image.new("RGB", (8, 8)).save(path)
  monkeypatch.setattr(Image, "open", open_together)
  before = Image.MAX_IMAGE_PIXELS
  with ThreadPoolExecutor(2) as pool:
    loads = [pool.submit(images.load_image, path, 8, 10**9) for path in paths]
    assert [load.result(timeout=20)[0].shape for load in loads] == [(8, 8, 3)] * 2
  assert Image.MAX_IMAGE_PIXELS == before


def test_an_open_under_another_pixel_limit_waits_and_is_not_overtaken(tmp_path, monkeypatch):
  """Threads opening under one limit share PIL's setting; one wanting another limit waits until
  they end (each open sees its own limit throughout), and later opens under the first limit wait
  for it in turn (a build's stream of opens does not keep it waiting)."""
  a, b, c = (str(tmp_path / f"{name}.png") for name in "abc")
  for path in (a, b, c):
    Image.new("RGB", (8, 8)).save(path)
  opens, release_a, real_open = [], threading.Event(), Image.open

  def recorded_open(fp, *args, **kwargs):  # (path, start or end, PIL's limit then)
    opens.append((fp, "start", Image.MAX_IMAGE_PIXELS))
    if fp == a:
      assert release_a.wait(10)
    opens.append((fp, "end", Image.MAX_IMAGE_PIXELS))
    return real_open(fp, *args, **kwargs)

  monkeypatch.setattr(Image, "open", recorded_open)
  with ThreadPoolExecutor(3) as pool:
    first = pool.submit(images.load_image, a, 8, 10**8)
    _until(lambda: opens)
    second = pool.submit(images.load_image, b, 8, 2 * 10**8)
    _until(lambda: decode_guards._limit_queue)  # the second waits
    third = pool.submit(images.load_image, c, 8, 10**8)
    _until(lambda: len(decode_guards._limit_queue) > 1 or len(opens) > 2)  # waits, or overtakes
    release_a.set()
    for load in (first, second, third):
      load.result(timeout=10)
  # Each PNG is opened twice under its limit: to load it, then to check its chunks' CRCs.
  assert opens == [(path, event, limit) for path, limit in [(a, 10**8), (b, 2 * 10**8), (c, 10**8)]
                   for _ in range(2) for event in ("start", "end")]


def test_the_images_decoded_at_once_fit_in_the_decode_memory(tmp_path, monkeypatch):
  """Each decode thread held a whole decode: 8 threads on 48 MP PNG scans took ~7 GB. The images
  decoded at once now fit in decode_guards.DECODE_MEMORY by their estimated peaks (two 100x100
  RGB images here: 200 kB each), one larger than it decodes alone (not never), and the build's
  images, notes, skips and order are those of one thread."""
  paths = []
  for i in range(12):
    paths.append(str(tmp_path / f"{i}.png"))
    side = 300 if i == 5 else 100  # 1.8 MB: more than the whole budget
    Image.fromarray(np.full((side, side, 3), 20 * i, np.uint8)).save(paths[-1])
  (tmp_path / "7.png").write_bytes(b"not an image")  # skipped at open
  (tmp_path / "9.png").write_bytes((tmp_path / "8.png").read_bytes()[:80])  # ... at load
  monkeypatch.setattr(decode_guards, "DECODE_MEMORY", 450_000)
  monkeypatch.setattr(images, "_decode_threads", lambda: 4)
  decoding, at_once, ended, lock, to_rgb = [], [], [], threading.Lock(), images._to_rgb
  holding, decode_memory = [0], decode_guards.decode_memory

  @contextlib.contextmanager
  def counted_memory():  # the decodes holding memory, from their reserve to their end
    reserved = []
    with decode_memory() as reserve:
      def counted_reserve(nbytes: int) -> None:
        reserve(nbytes)
        with lock:
          holding[0] += 1
          reserved.append(nbytes)
      try:
        yield counted_reserve
      finally:
        with lock:
          holding[0] -= len(reserved)

  def counted_to_rgb(img, *args):  # each decode's span includes its _to_rgb
    with lock:
      decoding.append(img.size)
      at_once.append(sorted(decoding))
    # Held until no other can start beside it (one waits for memory, and each that holds memory
    # has reached here: it loads its image first; or none is left of the 10 that get here):
    # every decode the memory bound lets in meanwhile is counted.
    _until(lambda: _waiting() and holding[0] == len(decoding)
           or len(ended) + len(decoding) == 10)
    try:
      return to_rgb(img, *args)
    finally:
      with lock:
        decoding.remove(img.size)
        ended.append(img.size)

  monkeypatch.setattr(decode_guards, "decode_memory", counted_memory)
  monkeypatch.setattr(images, "_to_rgb", counted_to_rgb)
  in_threads = list(images.load_images(paths, 16))
  assert max(map(len, at_once)) == 2
  assert [sizes for sizes in at_once if (300, 300) in sizes] == [[(300, 300)]]
  monkeypatch.setattr(images, "_to_rgb", to_rgb)
  monkeypatch.setattr(images, "_decode_threads", lambda: 1)
  alone = list(images.load_images(paths, 16))
  assert [type(r) for r in in_threads] == [type(r) for r in alone]
  for i, (got, expected) in enumerate(zip(in_threads, alone)):
    if isinstance(expected, images.SkipImage):
      assert (got.reason, str(got)) == (expected.reason, str(expected)), i
    else:
      np.testing.assert_array_equal(got[0], expected[0])
      assert got[1] == expected[1], i
  assert [type(r).__name__ for r in alone].count("SkipImage") == 2


def test_a_decode_larger_than_the_decode_memory_starts_alone_in_its_turn(monkeypatch):
  """decode_memory: one larger than DECODE_MEMORY waits until the decodes running end (not for
  ever), and a later one that would fit beside those waits for it (first come, first served)."""
  monkeypatch.setattr(decode_guards, "DECODE_MEMORY", 100)
  started, ends = [], {name: threading.Event() for name in "abc"}

  def decode(name: str, nbytes: int) -> None:
    with decode_guards.decode_memory() as reserve:
      reserve(nbytes)
      started.append(name)
      assert ends[name].wait(10)

  with ThreadPoolExecutor(3) as pool:
    runs = [pool.submit(decode, "a", 60)]
    _until(lambda: started)
    runs.append(pool.submit(decode, "b", 500))
    _until(lambda: _waiting() or len(started) > 1)
    runs.append(pool.submit(decode, "c", 30))  # 90 of 100 beside a
    _until(lambda: _waiting() > 1 or len(started) > 1)
    assert started == ["a"]
    ends["a"].set()
    _until(lambda: len(started) > 1)
    assert started == ["a", "b"] and _waiting() == 1  # c still waits
    ends["b"].set(), ends["c"].set()
    for run in runs:
      run.result(timeout=10)
  assert started == ["a", "b", "c"]


def test_the_program_s_pixel_limit_is_read_while_another_thread_opens_under_its_own(
    tmp_path, monkeypatch):
  """load_image(max_pixels=None) reads the program's limit (Image.MAX_IMAGE_PIXELS), but another
  thread opening under its own max_pixels has set PIL's to that one meanwhile: an image over the
  program's limit was read under the other's and stored, where alone it is skipped."""
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50 * 50)  # the calling program's choice
  path = str(tmp_path / "big.png")
  Image.new("RGB", (200, 200)).save(path)  # over twice the limit: DecompressionBombError
  alone = _outcome(path)
  with ThreadPoolExecutor(1) as pool:
    with decode_guards.pixel_limit(10**6):  # as while another thread opens under 10**6
      load = pool.submit(_outcome, path)
      _until(lambda: load.done() or decode_guards._limit_queue)  # read, or waiting its turn
    while_another_opens = load.result(timeout=10)
  assert (alone, while_another_opens) == ("too_large", "too_large")
  assert Image.MAX_IMAGE_PIXELS == 50 * 50
