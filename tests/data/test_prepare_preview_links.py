"""prepare's --preview through a symbolic link: checked, refused and written where the link
leads (its target), a link to itself named as a loop, and a folder linked into --folder refused
as inside it."""
from __future__ import annotations

import os

from PIL import Image

from llmimg_jax import output_files
from llmimg_jax.data import prepare
from tests.data.utils import _usage_error


def test_a_preview_link_is_checked_where_the_grid_is_written(shapes_cfg, tmp_path, capsys):
  """The grid is written through a --preview link to its target (save_preview), but the check
  made and tested the link's own folder: a link into /proc was built for, then failed to save;
  one into a missing folder failed to save (a FileNotFoundError traceback). Now the target's
  folder is made and tested before the build."""
  to_proc, to_missing = tmp_path / "proc.png", tmp_path / "new.png"
  to_proc.symlink_to("/proc/llmimg_nope.png")
  to_missing.symlink_to(tmp_path / "new" / "grid.png")
  flags = ["--dataset", "captioned_shapes/tiny_32", "--data_dir", shapes_cfg.data_dir,
           "--preview"]  # no --overwrite: neither target exists
  err = _usage_error(capsys, [*flags, str(to_proc)])
  assert f"error: --preview {str(to_proc)!r}: cannot write into /proc (" in err, err
  assert prepare.main([*flags, str(to_missing)])["preview"] == str(to_missing)
  with Image.open(tmp_path / "new" / "grid.png") as grid:
    assert grid.width == 4 * 160
  assert to_missing.is_symlink()


def test_a_preview_link_is_refused_only_if_its_target_exists(shapes_cfg, tmp_path, capsys):
  """A --preview link whose target did not exist yet was refused as existing unless --overwrite,
  though nothing would be overwritten (evaluate.py's --out writes through such a link). Its
  target is what must not exist: a link to an existing file is refused, naming both."""
  target, link = tmp_path / "grid.png", tmp_path / "link.png"
  target.write_bytes(b"my earlier grid")
  link.symlink_to(target)
  flags = ["--dataset", "captioned_shapes/tiny_32", "--data_dir", shapes_cfg.data_dir,
           "--preview", str(link)]
  err = _usage_error(capsys, flags)
  assert (f"error: --preview {str(link)!r} (a link to {target}) exists; remove it, name a new "
          "file, or pass --overwrite to replace it.") in err
  assert target.read_bytes() == b"my earlier grid"
  assert prepare.main([*flags, "--overwrite"])["preview"] == str(link)
  with Image.open(target) as grid:
    assert grid.width == 4 * 160
  assert link.is_symlink()


def test_a_preview_link_to_itself_is_named_as_a_loop(tmp_path, capsys):
  """`ln -s grid.png grid.png` was refused as '(a link to ...) exists', and with --overwrite the
  dataset was built and the grid replaced the link: a loop is named before the build."""
  loop = tmp_path / "grid.png"
  loop.symlink_to(loop.name)
  for overwrite in ([], ["--overwrite"]):
    err = _usage_error(capsys, ["--dataset", "captioned_shapes/tiny_32", "--data_dir",
                                str(tmp_path / "tfds"), "--preview", str(loop), *overwrite])
    assert (f"error: --preview {str(loop)!r} leads to itself through a link (a loop); name an "
            "image file.") in err, err
  assert loop.is_symlink() and not (tmp_path / "tfds").exists()


def test_a_preview_in_a_folder_linked_into_the_folder_is_refused(tmp_path, capsys, monkeypatch):
  """The build walks a folder linked into --folder, but the check resolved the link: a grid
  written there (through the link, or naming the folder it leads to) was then an image in the
  folder, and every later load warned that the folder had changed since its build."""
  folder, linked = tmp_path / "imgs", tmp_path / "more"
  (linked / "deeper").mkdir(parents=True)
  folder.mkdir()
  (folder / "captions.csv").write_text("file,caption\n")
  (folder / "more").symlink_to(linked)
  for preview in (folder / "more" / "grid.png", linked / "grid.png", linked / "deeper" / "g.png"):
    err = _usage_error(capsys, ["--dataset", "captioned_folder", "--folder", str(folder),
                                "--data_dir", str(tmp_path / "tfds"), "--preview", str(preview)])
    assert (f"error: --preview {str(preview)!r} is inside --folder {folder} (or a folder linked "
            "into it): the grid would be an image added to the folder") in err, err
  assert sorted(os.listdir(tmp_path)) == ["imgs", "more"]  # nothing built or written
  # A workdir or sample.py's --out in the folder through the link is in it too; `link/..` is
  # the link target's parent (here tmp_path), not the folder.
  assert output_files.inside(folder / "more" / "run", folder)
  assert not output_files.inside(tmp_path / "run", folder)
  assert not output_files.inside(folder / "more" / ".." / "run", folder)
  monkeypatch.setenv("HOME", str(tmp_path))  # --folder=~/imgs: no shell expands it after '='
  assert prepare._in_folder(str(linked / "g.png"), "~/imgs")
