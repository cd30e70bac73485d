"""llmimg_jax.cli.quiet_orbax's filter of asyncio's reports of abandoned Orbax reads."""
import asyncio
import logging

from llmimg_jax import cli


def _never_retrieved(error: Exception) -> logging.LogRecord:
  """asyncio's record of a task whose exception nobody awaited (as base_events logs it)."""
  async def fail():
    raise error
  loop = asyncio.new_event_loop()
  try:
    task = loop.create_task(fail())
    loop.run_until_complete(asyncio.wait([task]))
  finally:
    loop.close()
  exc = task.exception()
  return logging.LogRecord("asyncio", logging.ERROR, "base_events.py", 1771,
                           "Task exception was never retrieved\nfuture: %r", (task,),
                           (type(exc), exc, exc.__traceback__))


def test_abandoned_tensorstore_reads_are_dropped_and_other_errors_kept():
  # Seen under load after a failed restore of a checkpoint with deleted array files.
  read = ValueError('NOT_FOUND: Error opening "zarr" driver: Error reading "ema_params.conv.bias/'
                    '.zarray" in OCDBT database at local file "/tmp/run/checkpoints/2/state/"')
  assert not cli._not_orbax_task(_never_retrieved(read))
  assert cli._not_orbax_task(_never_retrieved(ValueError("a bug in our own code")))
