"""benchmarks/profile_step.py and step_options.py refuse flags they would ignore or could not
read, before any work."""
import sys
from pathlib import Path

import pytest

from benchmarks import profile_step

SCRIPT = str(Path(__file__).resolve().parents[2] / "benchmarks" / "profile_step.py")


class _Ran(Exception):
  pass


def _ran(*args, **kwargs):  # stands in for the work the script would start
  raise _Ran


@pytest.mark.parametrize("flags", [["--max_length", "160"], ["--bench", "64"], ["--sampling"]])
def test_generate_refuses_the_step_flags_it_would_ignore(monkeypatch, capsys, flags):
  """--generate --max_length 160 profiled the 64-token T5 row and said nothing of the flag."""
  monkeypatch.setattr(profile_step, "greedy_generation_args", _ran)
  monkeypatch.setattr(profile_step, "models_and_batch", _ran)
  monkeypatch.setattr(sys, "argv", [SCRIPT, "--no-reuse-host-memory", "--generate", *flags])
  with pytest.raises(SystemExit) as e:
    profile_step.main()
  assert e.value.code == 2
  assert f"{flags[0]} would be ignored: drop it or --generate." in capsys.readouterr().err


@pytest.mark.parametrize("flag,item,form", [("--set", "llmimg_jax.gan.layers.NARROW_CONVS",
                                             "MODULE.ATTR=VALUE"),
                                            ("--xla", "xla_cpu_option", "OPTION=VALUE")])
def test_an_item_without_a_value_is_a_usage_error_naming_it(monkeypatch, capsys, flag, item, form):
  """Was a ValueError traceback ('not enough values to unpack', 'dictionary update sequence')."""
  monkeypatch.setattr(profile_step, "models_and_batch", _ran)
  monkeypatch.setattr(sys, "argv", [SCRIPT, "--no-reuse-host-memory", flag, item])
  with pytest.raises(SystemExit) as e:
    profile_step.main()
  assert e.value.code == 2
  assert f"{flag} {item!r}: expected {form}." in capsys.readouterr().err


def test_step_options_refuses_a_malformed_variant_before_compiling_any(monkeypatch, capsys):
  """A typo in the last --options stopped with a ValueError traceback after the earlier variants
  had compiled (minutes at --bench 64)."""
  from benchmarks import step_options
  monkeypatch.setattr(step_options, "models_and_batch", _ran)
  monkeypatch.setattr(sys, "argv", ["step_options.py", "--no-reuse-host-memory", "--options",
                                    "train", "--options", "train;NARROW_CONVS"])
  with pytest.raises(SystemExit) as e:
    step_options.main()
  assert e.value.code == 2
  assert "variant 'train;NARROW_CONVS': 'NARROW_CONVS' is none of" in capsys.readouterr().err


@pytest.mark.parametrize("options, error", [
    # The AttributeError came as the variant was traced, after the ones before it compiled.
    (["train", "train;llmimg_jax.gan.layers.NARROW_CONV=False"],
     "variant 'train;llmimg_jax.gan.layers.NARROW_CONV=False': 'llmimg_jax.gan.layers.NARROW_CONV' "
     "names nothing: llmimg_jax.gan.layers has no 'NARROW_CONV'."),
    (["llmimg_jax.gan.discriminator.conv4x4_stride2=@llmimg_jax.gan.discriminator.no_conv"],
     "'llmimg_jax.gan.discriminator.no_conv' names nothing: llmimg_jax.gan.discriminator has no "
     "'no_conv'."),
    (["llmimg_jax.gan.no_module.X=1"], "'llmimg_jax.gan.no_module.X' names nothing: no module "
                                       "'llmimg_jax.gan.no_module'"),
    # Compiled again, then one result row for both: no comparison, no word.
    (["train", "none"], "variant 'none' is given twice (--baseline is the first); for an A/A "
                        "check of noise, spell the second otherwise, e.g. 'none;none'.")])
def test_step_options_refuses_a_switch_naming_nothing_or_a_repeated_variant(monkeypatch, capsys,
                                                                             options, error):
  from benchmarks import step_options
  monkeypatch.setattr(step_options, "models_and_batch", _ran)
  monkeypatch.setattr(sys, "argv", ["step_options.py", "--no-reuse-host-memory",
                                    *(f"--options={option}" for option in options)])
  with pytest.raises(SystemExit) as e:
    step_options.main()
  assert e.value.code == 2
  assert error in capsys.readouterr().err


def test_profile_step_refuses_a_set_naming_nothing(monkeypatch, capsys):
  monkeypatch.setattr(profile_step, "models_and_batch", _ran)
  monkeypatch.setattr(sys, "argv", [SCRIPT, "--no-reuse-host-memory", "--set",
                                    "llmimg_jax.gan.layers.NARROW_CONV=False"])
  with pytest.raises(SystemExit) as e:
    profile_step.main()
  assert e.value.code == 2
  assert ("--set 'llmimg_jax.gan.layers.NARROW_CONV=False': 'llmimg_jax.gan.layers.NARROW_CONV' "
          "names nothing" in capsys.readouterr().err)
