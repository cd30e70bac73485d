"""What the error of a checkpoint that did not restore says: not damage but want of access or
resources (retrying can succeed), or a checkpoint that does not fit this run (another config,
version, host count, dataset or JAX PRNG), which an older one would not fix either."""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from llmimg_jax import prng
from llmimg_jax.data import host_slices

# Status codes (TensorStore's, gRPC's) and exception types of a read that failed for want of
# access or resources: retrying later can succeed, so it is not damage.
_ACCESS_CODES = re.compile(
    r"\b(PERMISSION_DENIED|UNAUTHENTICATED|UNAVAILABLE|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED)\b")
_ACCESS_TYPES = (PermissionError, MemoryError, TimeoutError, ConnectionError)


def is_access_error(e: BaseException | None) -> bool:
  seen = set()
  while e is not None and id(e) not in seen:  # the error and what it was raised from
    seen.add(id(e))
    if isinstance(e, _ACCESS_TYPES) or _ACCESS_CODES.search(str(e)):
      return True
    e = e.__cause__ or e.__context__
  return False


# The words of an intact checkpoint that does not fit this run: Orbax's when its arrays do not fit
# the state restored into; grain's when the input pipeline's settings (data.num_workers, the batch
# size per host, the seed, the data) differ from those its iterator state was saved with.
_MISMATCH = ("tree structures do not match", "is not compatible with the stored shape",
             "in checkpoint does not match")


def is_mismatch(e: BaseException | None) -> bool:
  return isinstance(e, host_slices.ProcessCountMismatchError) or (
      e is not None and any(m in str(e) for m in _MISMATCH))


def data_change(errors: Iterable[BaseException | None]) -> str | None:
  """The record counts when grain refused the iterator state for a sampler or a source over
  another number of records (both reprs name it), else None."""
  for e in errors:
    text = str(e)
    if "Sampler in checkpoint does not match" in text or "DataSource in checkpoint" in text:
      counts = re.findall(r"num_records=(\d+)|(\d+) records", text)
      counts = [a or b for a, b in counts]
      if len(counts) >= 2 and counts[0] != counts[1]:
        return f"the checkpoints' input pipeline read {counts[0]} records, this one {counts[1]}"
  return None


PRNG_ITEM = "prng"  # each checkpoint's record of its training key's PRNG


def prng_record() -> dict[str, str]:
  """The PRNG of the run's training key, raw key data (TrainState.rng) under the default's."""
  return {"jax_default_prng_impl": jax.config.jax_default_prng_impl}


def _key_length(impl: str) -> str:
  try:
    return str(prng.raw_key_length(impl))
  except ValueError:  # a PRNG this JAX lacks
    return "?"


def prng_switch(step_dir: Path) -> str | None:
  """How the PRNG recorded with the checkpoint in `step_dir` differs from this process's
  jax_default_prng_impl, else None (also for checkpoints saved before the record: prng_change)."""
  try:  # the handler itself: a Checkpointer would wait for every host, which may not all read it
    saved = ocp.JsonCheckpointHandler().restore(
        step_dir / PRNG_ITEM, args=ocp.args.JsonRestore())["jax_default_prng_impl"]
  except Exception:  # noqa: BLE001 - no readable record: nothing to compare
    return None
  if saved == (now := jax.config.jax_default_prng_impl):
    return None
  return (f"jax_default_prng_impl {saved} (a training key of uint32 [{_key_length(saved)}]); "
          f"this process's is {now} (uint32 [{_key_length(now)}])")


def prng_change(state_dir: Path) -> str | None:
  """How the training key saved in `state_dir` (raw key data: uint32 [2] under threefry2x32, [4]
  under rbg, ...) differs in shape from this process's jax_default_prng_impl's, else None (PRNGs
  of one key shape, e.g. rbg and unsafe_rbg, are not told apart)."""
  try:
    saved = ocp.StandardCheckpointHandler().metadata(state_dir)["rng"].shape[-1]
  except Exception:  # noqa: BLE001 - no readable metadata: nothing to compare
    return None
  impl = jax.config.jax_default_prng_impl
  if saved == (now := prng.raw_key_length(impl)):
    return None
  return (f"their training key is uint32 [{saved}], made under jax_default_prng_impl "
          f"{' or '.join(prng.impls_with_key_length(saved)) or '?'}; this process's is {impl} "
          f"(uint32 [{now}])")


def brief_error(e: BaseException, limit: int = 600) -> str:
  """An Orbax/TensorStore error in one line (their messages embed whole JSON specs), with its
  innermost cause (where Orbax's own message only says which array index failed)."""
  def one_line(err: BaseException) -> str:
    text = str(err).split(" [tensorstore_spec=")[0].split(" See full TensorStore details:")[0]
    return f"{type(err).__name__}: {' '.join(text.split())}"
  text, cause = one_line(e), e.__cause__
  while cause is not None and cause.__cause__ is not None:
    cause = cause.__cause__
  if cause is not None:
    text += f" (cause: {one_line(cause)})"
  return f"{text[:limit]}{'...' if len(text) > limit else ''}"
