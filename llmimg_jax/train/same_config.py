"""Every host of a multi-host run trains the same config into the same workdir: hosts that
differ (another --config.train.steps, --workdir or batch size) would wait in a collective that
the others never reach until JAX's timeouts abort them minutes later."""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections

from llmimg_jax.train import hosts
from llmimg_jax.train.config_values import config_changes, config_values

# data.data_dir is compared by whether each host sees host 0's build (loop._check_data_shared).
_PER_HOST = ("data_dir",)
_keys = itertools.count()


class ConfigDiffersError(ValueError):
  """The hosts of a multi-host run were started with different configs or workdirs."""


def _settings(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
  values = config_values(config)
  for key in _PER_HOST:
    values.get("data", {}).pop(key, None)
  return {"workdir": str(workdir.absolute()), "config": values}


def _host_0_settings(mine: dict[str, Any], timeout_s: int = 900) -> dict[str, Any]:
  """Host 0's settings, through the JAX distributed service's key-value store."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  client = distributed.global_state.client
  key = f"llmimg_jax_settings_{next(_keys)}"
  if jax.process_index() == 0:
    client.key_value_set_bytes(key, json.dumps(mine).encode())
    return mine
  return json.loads(client.blocking_key_value_get_bytes(key, timeout_s * 1000))


def check_same_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
  """Raises ConfigDiffersError on every host if any host's config or workdir is not host 0's."""
  if jax.process_count() == 1:
    return
  mine = _settings(config, workdir)
  changes = config_changes(_host_0_settings(mine), mine)
  others = hosts.failed_hosts(not changes)
  if not others:
    return
  which = (f"this host's differ from host 0's ({'; '.join(changes)}; host 0's value first)"
           if changes else f"host(s) {others} differ from this one's; their logs name the values")
  raise ConfigDiffersError(
      f"Every host must train the same config into the same --workdir, but {which}. Start every "
      "host with the same --config file, --config.* overrides and --workdir; nothing was "
      "trained.")
