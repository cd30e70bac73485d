"""What threads decoding images at once (images.load_images) share: PIL's process-wide settings
that load_image changes, set by the first thread and restored by the last, so that each thread
decodes as it would alone and the program's settings are its own again after; and the memory
their decodes hold, bounded together (DECODE_MEMORY)."""
from __future__ import annotations

import collections
import contextlib
import itertools
import threading
import warnings
from collections.abc import Callable, Iterator

from PIL import Image, ImageFile

# The estimated peak bytes (images._peak_bytes) of the images decoded at once, in all threads
# (`decode_memory`). Unbounded, 8 threads decoding 48 MP PNG scans peaked near 7 GB. 2 GiB lets 8
# threads decode 12 MP PNGs (photos: 0.24 GB each) at once, and an image at PIL's default limit
# (89.5 MP: 1.8 GB as RGB) beside small ones; a larger one decodes alone.
DECODE_MEMORY = 2 << 30
_DECODE_MEMORY = threading.Condition()
_decoding_bytes = 0  # estimated peak bytes of the decodes running now
_decode_queue: collections.deque[object] = collections.deque()  # those waiting, in turn
# Threads opening under a pixel limit (`pixel_limit`): how many, the limit they share,
# what the program's was (restored when the last one ends), and the threads waiting, in turn.
_PIL_LIMIT = threading.Condition()
_limit_users = 0
_limit: int | None = None
_program_limit: int | None = None  # Image.MAX_IMAGE_PIXELS before the first of them set theirs
_limit_queue: collections.deque[tuple[object, int | None]] = collections.deque()
_LOADING_LOCK = threading.Lock()
_loading = 0  # load_image calls decoding now, in any thread
_truncated_setting = False  # the program's ImageFile.LOAD_TRUNCATED_IMAGES while they do


class _OnlyItself(tuple):
  """A warning filter equal to itself only, so that list.remove takes out this object in one
  step (a filter another thread puts in meanwhile, or an equal one the program set, stays)."""

  def __eq__(self, other: object) -> bool:
    return self is other

  def __ne__(self, other: object) -> bool:
    return self is not other

  __hash__ = tuple.__hash__


# The warning filter that makes PIL's DecompressionBombWarning an error while they open and
# load, and the list of filters it went into: one object, taken out by identity.
_BOMB_ERROR = _OnlyItself(("error", None, Image.DecompressionBombWarning, None, 0))
_filters_with_ours: list = []


def _wait_in_line(turns: threading.Condition, line: collections.deque, entry: object,
                  turn: Callable[[], bool]) -> None:
  """Holding `turns`: `entry` joins `line` and waits until turn(), then leaves it, waking those
  after it (also when interrupted: they do not wait for it)."""
  line.append(entry)
  try:
    turns.wait_for(turn)
  finally:
    line.remove(entry)
    turns.notify_all()


@contextlib.contextmanager
def pixel_limit(limit: int | None) -> Iterator[None]:
  """PIL's decompression-bomb limit set to `limit` while opening and loading (it checks before we
  can, and a TIFF's size again as it loads), so a `max_pixels` above PIL's default admits those
  images, and its DecompressionBombWarning an error. Threads wanting the same limit open at once
  (on NFS or gcsfuse an open is a network round trip); one wanting another waits until they end,
  and later ones wanting theirs wait for it. The program's limit is restored, and the error filter
  taken out, when the last one ends."""
  global _limit_users, _limit, _program_limit
  limit = limit or None
  waiting = (object(), limit)

  def turn() -> bool:  # the limit is free or ours, and no one before us wants another
    before = itertools.takewhile(lambda entry: entry is not waiting, _limit_queue)
    return (not _limit_users or _limit == limit) and all(other == limit for _, other in before)

  with _PIL_LIMIT:
    _wait_in_line(_PIL_LIMIT, _limit_queue, waiting, turn)
    if not _limit_users:
      _program_limit, Image.MAX_IMAGE_PIXELS, _limit = Image.MAX_IMAGE_PIXELS, limit, limit
      _bomb_warning_raises()
    _limit_users += 1
  try:
    yield
  finally:
    with _PIL_LIMIT:
      _limit_users -= 1
      if not _limit_users:
        Image.MAX_IMAGE_PIXELS = _program_limit
        _bomb_warning_as_before()
        _PIL_LIMIT.notify_all()


def _bomb_warning_raises() -> None:
  """_BOMB_ERROR put first in the warning filters in use. (Within catch_warnings, entered by the
  first open and left by the last, the filters of the first's start were put back: one that any
  thread set meanwhile was lost; another thread's catch_warnings spanning that end lost its
  filters, and then put back those with the error, left on for the rest of the program.) PIL's
  bomb warnings shown before are forgotten: Python shows a warning once per message and place
  (PIL.Image's __warningregistry__), which a filter put in by hand does not reset, so one the
  program saw word for word was quiet, not an error (load_image checks the declared size itself;
  a size PIL reads only as it loads, a BLP texture's JPEG, only this checks)."""
  global _filters_with_ours
  _filters_with_ours = warnings.filters
  _filters_with_ours.insert(0, _BOMB_ERROR)
  shown = vars(Image).get("__warningregistry__", {})  # {(text, category, line): True, ...}
  for key in list(shown):
    if isinstance(key, tuple) and key[1] is Image.DecompressionBombWarning:
      shown.pop(key, None)


def _bomb_warning_as_before() -> None:
  """_BOMB_ERROR taken out of the list it went into and of the one in use now (another thread's
  catch_warnings may have put a copy in its place meanwhile); every other filter stays."""
  for filters in (_filters_with_ours, warnings.filters):
    with contextlib.suppress(ValueError):  # not in it
      # One step: found, then deleted by index, a filter another thread put first in between
      # was deleted instead.
      filters.remove(_BOMB_ERROR)


def program_pixel_limit() -> int | None:
  """PIL's limit as the program set it: Image.MAX_IMAGE_PIXELS, but while threads open under
  their own (`pixel_limit`) the one restored when they end."""
  with _PIL_LIMIT:
    return _program_limit if _limit_users else Image.MAX_IMAGE_PIXELS


@contextlib.contextmanager
def truncated_images_refused() -> Iterator[None]:
  """ImageFile.LOAD_TRUNCATED_IMAGES off (a truncated file is skipped, not padded; a PNG chunk's
  broken checksum refused) while any thread decodes; the program's setting is restored when the
  last one ends. (Each call setting and restoring it itself would, in threads, restore it while
  another one decodes.)"""
  global _loading, _truncated_setting
  with _LOADING_LOCK:
    if not _loading:
      _truncated_setting, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    _loading += 1
  try:
    yield
  finally:
    with _LOADING_LOCK:
      _loading -= 1
      if not _loading:
        ImageFile.LOAD_TRUNCATED_IMAGES = _truncated_setting


@contextlib.contextmanager
def decode_memory() -> Iterator[Callable[[int], None]]:
  """reserve(nbytes), to call once: waits until `nbytes` more fit in DECODE_MEMORY beside the
  decodes running now (in any thread), first come first served, and holds them until the block
  ends. A decode larger than DECODE_MEMORY starts when none runs (alone, never waiting for ever)."""
  global _decoding_bytes
  held = 0

  def reserve(nbytes: int) -> None:
    global _decoding_bytes
    nonlocal held
    ticket = object()

    def turn() -> bool:
      fits = not _decoding_bytes or _decoding_bytes + nbytes <= DECODE_MEMORY
      return _decode_queue[0] is ticket and fits

    with _DECODE_MEMORY:
      _wait_in_line(_DECODE_MEMORY, _decode_queue, ticket, turn)  # the next may fit beside it
      _decoding_bytes += nbytes
      held = nbytes

  try:
    yield reserve
  finally:
    with _DECODE_MEMORY:
      _decoding_bytes -= held
      _DECODE_MEMORY.notify_all()
