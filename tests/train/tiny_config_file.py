"""tiny_config as a config file for train.py subprocesses:
--config tests/train/tiny_config_file.py:DATA_DIR"""
from tests.train.utils import tiny_config


def get_config(data_dir: str):
  return tiny_config(data_dir)
