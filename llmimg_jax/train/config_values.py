"""A config as a run saves it (WORKDIR/config.json, each checkpoint's `config` item) and the
values that differ between two such configs (on resume, and between the hosts of a run).

Keys read by one dataset only are not carried for another: base_config's data.config (the
captioned_shapes builder config, '32_small' by default) would read as if a captioned_folder or
COCO run had used it. Configs saved before were written with it, so comparisons drop it too.
"""
from __future__ import annotations

import copy
import json
from typing import Any

import ml_collections

# data.<key>: the one dataset that reads it.
_READ_BY = {"config": "captioned_shapes"}


def saved_values(values: dict[str, Any]) -> dict[str, Any]:
  """A config's JSON values with the data keys its dataset does not read set to None."""
  data = values.get("data")
  if not isinstance(data, dict):
    return values
  unread = [k for k, name in _READ_BY.items() if data.get("name") != name and k in data]
  if not unread:
    return values
  values = copy.deepcopy(values)
  values["data"].update(dict.fromkeys(unread))
  return values


def config_values(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config` as saved: its JSON values, less the data keys its dataset does not read."""
  return saved_values(json.loads(config.to_json()))


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  if isinstance(d, dict) and d:
    return {k: v for key, value in d.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
  return {prefix[:-1]: d}


def config_diff(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
  """{key: (saved value, value now)} for every value of two configs (as JSON dicts) that differs,
  '(none)' where one lacks the key; keys their dataset does not read are not compared (a run
  saved with data.config='32_small' for a folder is the same run)."""
  old, new = _flat(saved_values(saved)), _flat(saved_values(now))
  return {k: (old.get(k, "(none)"), new.get(k, "(none)"))
          for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}


def describe_changes(diff: dict[str, tuple[Any, Any]]) -> list[str]:
  """config_diff's changes as 'key: saved -> now'."""
  return [f"{k}: {old!r} -> {new!r}" for k, (old, new) in diff.items()]


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
  """'key: saved -> now' for every value that differs (config_diff)."""
  return describe_changes(config_diff(saved, now))
