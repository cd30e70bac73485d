"""check_out_dir refuses, before any sampling, an --out that write_samples could not write;
write_samples keeps the samples another process wrote there meanwhile."""
from __future__ import annotations

import json
import os
import re
import threading
import time

import pytest

from llmimg_jax.sample import checks, outputs
from tests.sample.utils import black_samples


def test_an_output_linked_to_a_folder_is_refused_before_sampling(tmp_path):
  """write_samples writes a linked output through to its target (d02b573): to a folder, that
  failed with IsADirectoryError once the earlier outputs were removed and some new ones moved in.
  """
  out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
  out.mkdir()
  elsewhere.mkdir()
  (out / checks.JSONL_NAME).symlink_to(elsewhere)
  message = (f"Output '{out}': {out / checks.JSONL_NAME} is a symbolic link to {elsewhere}, a "
             "folder; point it at a file, or remove the link.")
  with pytest.raises(IsADirectoryError, match=re.escape(message)):
    checks.check_out_dir(str(out), overwrite=True)  # as sample.py passes --out


def test_an_output_linked_into_an_unwritable_folder_is_refused_before_sampling(tmp_path):
  """An --out, or an output in it, linked into a folder no file can be created in passed (we run
  as root: os.access allows /proc, the kernel does not) and failed after sampling."""
  out = tmp_path / "out"
  out.mkdir()
  (out / checks.GRID_NAME).symlink_to("/proc/llmimg_nope.png")
  message = (f"Output '{out}': {out / checks.GRID_NAME} is a symbolic link to "
             "/proc/llmimg_nope.png, whose folder /proc is not writable (")
  with pytest.raises(PermissionError, match=re.escape(message)):
    checks.check_out_dir(str(out), overwrite=True)
  (tmp_path / "proc").symlink_to("/proc")
  with pytest.raises(PermissionError, match=re.escape(f"Output '{tmp_path}/proc/samples': "
                                                      f"{tmp_path / 'proc'} is not writable (")):
    checks.check_out_dir(f"{tmp_path}/proc/samples")
  assert list(out.iterdir()) == [out / checks.GRID_NAME]  # the probes are gone


def test_an_output_or_out_that_is_a_loop_of_links_is_named_as_one(tmp_path):
  """A named output linked to itself (ln -s grid.png grid.png) passed: its resolved path is the
  link, whose folder is --out, and old_outputs does not count it (it does not exist), so
  write_samples replaced the link, where the shell's > fails (Too many levels of symbolic links)
  and output_files.check_output_file names the loop; an --out that loops was 'a symbolic link to
  loop, which does not exist; create that directory'."""
  out = tmp_path / "out"
  out.mkdir()
  (out / checks.GRID_NAME).symlink_to(checks.GRID_NAME)
  message = (f"Output '{out}': {out / checks.GRID_NAME} is a symbolic link to {checks.GRID_NAME}, "
             "which leads back to itself (a loop); point it at a file, or remove the link.")
  for overwrite in (False, True):
    with pytest.raises(OSError, match=re.escape(message)):
      checks.check_out_dir(str(out), overwrite=overwrite)
  assert (out / checks.GRID_NAME).is_symlink()
  (out / checks.GRID_NAME).unlink()
  (out / "p0000_s000.png").symlink_to("other.png")  # a loop through a second link
  (out / "other.png").symlink_to("p0000_s000.png")
  with pytest.raises(OSError, match=re.escape(f"{out / 'p0000_s000.png'} is a symbolic link to "
                                              "other.png, which leads back to itself (a loop)")):
    checks.check_out_dir(str(out), overwrite=True)
  (tmp_path / "loop").symlink_to("loop")
  for given in (tmp_path / "loop", tmp_path / "loop" / "samples"):
    with pytest.raises(OSError, match=re.escape(
        f"Output '{given}': {tmp_path / 'loop'} is a symbolic link to loop, which leads back to "
        "itself (a loop); pass another --out.")):
      checks.check_out_dir(str(given))


def test_an_output_linked_to_a_pipe_or_a_device_is_named_before_sampling(tmp_path):
  """grid.png -> /dev/null (to drop the grid) passed with overwrite, and write_samples then
  renamed a file over the target (as root, over /dev/null itself; else a PermissionError after
  sampling), where the shell's `>` writes into it: named before sampling, as a fifo is."""
  out = tmp_path / "out"
  out.mkdir()
  os.mkfifo(tmp_path / "fifo")
  for target in ("/dev/null", str(tmp_path / "fifo")):
    (out / checks.GRID_NAME).symlink_to(target)
    with pytest.raises(OSError, match=re.escape(
        f"Output '{out}': {out / checks.GRID_NAME} is a symbolic link to {target}, which is not "
        "a regular file (a pipe, a device or a socket); point it at a file, or remove the link.")):
      checks.check_out_dir(str(out), overwrite=True)
    (out / checks.GRID_NAME).unlink()
  assert os.listdir(out) == []


def _run_of(tmp_path, data: dict):
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(json.dumps({"data": data}))
  return run


def test_an_out_inside_the_runs_training_folder_is_refused(tmp_path):
  """sample.py wrote its PNGs into the run's captioned_folder when --out was in it: images added
  to the training data, so the run's next resume reported the folder changed since its build."""
  images = tmp_path / "images"
  (images / "sub").mkdir(parents=True)
  (tmp_path / "link").symlink_to(images)
  run = _run_of(tmp_path, {"name": "captioned_folder", "folder": str(images)})
  for out in (images, images / "samples", tmp_path / "link" / "sub" / "samples"):
    message = (f"Output {str(out)!r} is inside the run's training images "
               f"(config.data.folder={str(images)!r}): its PNGs would be images added to the "
               "folder, whose build the run's next resume reports as changed; pass an --out "
               "outside it, e.g. samples/NAME.")
    with pytest.raises(ValueError, match=re.escape(message)):
      checks.check_out_outside_data(str(out), str(run))
  checks.check_out_outside_data(str(tmp_path / "samples"), str(run))
  checks.check_out_outside_data(str(tmp_path / "images2"), str(run))  # a name that starts alike
  shapes = tmp_path / "shapes"
  shapes.mkdir()
  run_of_shapes = _run_of(shapes, {"name": "captioned_shapes", "folder": str(images)})
  checks.check_out_outside_data(str(images / "samples"), str(run_of_shapes))
  checks.check_out_outside_data(str(images / "samples"), str(tmp_path / "no_run"))  # no config


def test_samples_another_process_wrote_meanwhile_are_kept(tmp_path, monkeypatch):
  """Two sample.py on one new --out both passed the check and both exited 0, the later one
  deleting the other's images (without --overwrite)."""
  out = tmp_path / "out"
  fromarray = outputs.Image.fromarray

  def another_process_writes(image):  # while this call stages its images
    out.joinpath("p0000_s000.png").write_bytes(b"the other's")
    return fromarray(image)

  monkeypatch.setattr(outputs.Image, "fromarray", another_process_writes)
  with pytest.raises(FileExistsError) as refused:
    outputs.write_samples(black_samples(1, 2), out)
  assert str(refused.value) == (
      f"Output '{out}' received other samples while these were written (1 files, e.g. "
      "p0000_s000.png; another sample.py?), which are kept; these were not written: pass a new "
      "directory, or --overwrite to replace those.")
  assert os.listdir(out) == ["p0000_s000.png"]
  assert (out / "p0000_s000.png").read_bytes() == b"the other's"


def test_two_writers_on_one_out_take_turns(tmp_path, monkeypatch):
  """Both passed that check when each checked before the other's renames: the second to rename
  deleted or mixed with the first's files. The first to put its files in place (here A, paused
  there for 0.5 s) now holds --out until it is done; the other then finds them."""
  out, a_in_place = tmp_path / "out", threading.Event()
  listed = outputs.old_outputs

  def slow_for_a(folder):
    if threading.current_thread().name == "A" and not a_in_place.is_set():
      a_in_place.set()
      time.sleep(0.5)
    return listed(folder)

  monkeypatch.setattr(outputs, "old_outputs", slow_for_a)
  errors = {}

  def write(name: str, num_prompts: int) -> None:
    try:
      outputs.write_samples(black_samples(num_prompts, 1), out)
    except FileExistsError as e:
      errors[name] = e

  a = threading.Thread(target=write, args=("A", 1), name="A")
  a.start()
  assert a_in_place.wait(30)
  write("B", 2)
  a.join()
  assert set(errors) == {"B"}
  assert sorted(os.listdir(out)) == ["grid.png", "p0000_s000.png", "samples.jsonl"]
