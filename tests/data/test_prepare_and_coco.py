"""The prepare CLI (build + preview grid) and the coco_captions mapping."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llmimg_jax import output_files
from llmimg_jax.data import captioned_folder, coco, pipeline, prepare
from tests.data.utils import _usage_error, folder_argv


def test_prepare_builds_and_writes_preview(shapes_cfg, tmp_path):
  out = tmp_path / "grid.png"
  report = prepare.main(["--dataset", "captioned_shapes/tiny_32", "--data_dir",
                         shapes_cfg.data_dir, "--preview", str(out)])
  assert report["num_examples"] == 256
  grid = Image.open(out)
  assert grid.mode == "RGB" and grid.width == 4 * 160 and grid.height > 4 * 160
  # Caption text (dark pixels) is drawn below the first image.
  strip = np.asarray(grid)[160:200, :160]
  assert (strip < 100).any()
  test = prepare.main(["--dataset", "captioned_shapes/tiny_32", "--data_dir",
                       shapes_cfg.data_dir, "--split", "test"])
  assert test["split"] == "test"
  assert test["num_examples"] == len(pipeline.load_source(shapes_cfg, "test")) != 256


def test_preview_of_images_of_different_sizes_shows_their_centres():
  wide = np.zeros((20, 40, 3), np.uint8)
  wide[:, 10:30] = (255, 0, 0)  # the centre square is red
  tall = np.zeros((60, 30, 3), np.uint8)
  tall[15:45] = (0, 0, 255)  # the centre square is blue
  source = [{"image": wide, "captions": ["wide"]}, {"image": tall, "captions": ["tall"]}]
  grid = np.asarray(prepare.preview_grid(source, columns=2, cell=40))
  assert grid.shape[1] == 80
  np.testing.assert_array_equal(grid[[1, 20, 38]][:, [1, 20, 38]], np.full((3, 3, 3), (255, 0, 0)))
  np.testing.assert_array_equal(grid[[1, 20, 38]][:, [41, 60, 78]],
                                np.full((3, 3, 3), (0, 0, 255)))


def test_a_preview_of_no_examples_is_named():
  """preview_grid of an empty source, or num=0, failed in min(cell, *()) as "'int' object is not
  iterable" (prepare's --preview cannot reach it: an empty split is not built, a folder with no
  usable image is refused; from Python it can)."""
  with pytest.raises(ValueError, match=r"^preview_grid: no examples to show \(num=16 of a source "
                                       r"of 0\); pass a source with examples and num >= 1\.$"):
    prepare.preview_grid([])
  source = [{"image": np.zeros((8, 8, 3), np.uint8), "captions": ["black"]}]
  with pytest.raises(ValueError, match=r"\(num=0 of a source of 1\)"):
    prepare.preview_grid(source, num=0)
  assert prepare.preview_grid(source, columns=1, cell=8).width == 8


def test_prepare_captioned_folder_reports_summary(tmp_path, capsys):
  folder = tmp_path / "imgs"
  folder.mkdir()
  Image.new("RGB", (10, 10), "red").save(folder / "a.png")
  (folder / "b.png").write_bytes(b"")
  (folder / "captions.jsonl").write_text(
      '{"file": "a.png", "caption": "red"}\n{"file": "b.png", "caption": "empty"}\nnot json\n')
  report = prepare.main(folder_argv(folder, tmp_path / "tfds"))
  assert report["num_examples"] == 1
  assert report["summary"]["skipped"] == {"empty_file": 1, "invalid_json": 1}
  # stdout is the report alone (TFDS's "Downloading and preparing dataset ..." lines of a first
  # build went there too, so `prepare ... | jq` failed): it parses as JSON
  assert json.loads(capsys.readouterr().out) == report


def test_prepare_without_the_folder_is_one_line_error(tmp_path, capsys):
  err = _usage_error(capsys, ["--dataset", "captioned_folder", "--folder", str(tmp_path / "nope"),
                              "--data_dir", str(tmp_path / "tfds")])
  # Named as this command's flags, not the data config's keys.
  assert "error: captioned_folder needs --folder set to an existing folder" in err, err
  assert f"no build of it in --data_dir='{tmp_path / 'tfds'}')" in err, err


def test_the_folders_own_errors_name_the_folder_flag_once(tmp_path, capsys, monkeypatch):
  """captioned_folder's 'set data.folder (or --folder)' read 'set --folder (or --folder)' once
  prepare named the data config's keys as its flags."""
  def load_source(cfg, split):
    del split
    captioned_folder.folder_config("", cfg.image_size)  # its error for a config without a folder
  monkeypatch.setattr(pipeline, "load_source", load_source)
  err = _usage_error(capsys, ["--dataset", "captioned_folder", "--folder", str(tmp_path),
                              "--data_dir", str(tmp_path / "tfds")])
  assert err.endswith("error: captioned_folder needs a source folder: set --folder.\n"), err


def test_a_data_dir_that_cannot_be_written_is_one_line_error(tmp_path, capsys):
  """A --data_dir under a file (or unwritable, or full) ended in os.makedirs' traceback."""
  (tmp_path / "a_file").write_text("not a folder")
  data_dir = tmp_path / "a_file" / "tfds"
  err = _usage_error(capsys, ["--dataset", "captioned_shapes/tiny_32", "--data_dir",
                              str(data_dir)])
  assert (f"error: Could not build captioned_shapes/tiny_32 in --data_dir={str(data_dir)!r} "
          f"(NotADirectoryError: [Errno 20] Not a directory: {str(data_dir)!r})") in err, err
  assert "set --data_dir to a folder you can write" in err
  assert "Traceback" not in err


@pytest.mark.parametrize("flags, error", [
    (["--dataset", "captioned_folder"], "--dataset captioned_folder needs --folder DIR: your "
     "images with captions.jsonl or captions.csv."),
    (["--dataset", "captioned_shapes/tiny_32", "--folder", "imgs"], "--folder only applies "
     "to --dataset captioned_folder (captioned_shapes/tiny_32 stores its images at its own "
     "size); drop it."),
    (["--dataset", "coco_captions", "--folder", "imgs", "--image_size", "16"], "--folder, "
     "--image_size only apply to --dataset captioned_folder (coco_captions stores"),
    (["--dataset", "coco_captions/2017"], "--dataset coco_captions/2017: coco_captions has no "
     "configs to choose (/2017 would be ignored); give --dataset coco_captions."),
    (["--dataset", "captioned_folder/x", "--folder", "imgs"], "--dataset captioned_folder/x: "
     "captioned_folder has no configs to choose (/x would be ignored)"),
    (["--dataset", "shapes/64"], "--dataset shapes/64: no dataset 'shapes'; name one of "
     "captioned_shapes[/CONFIG], captioned_folder, coco_captions."),
    (["--dataset", "captioned_shapes/65"], "--dataset captioned_shapes/65: captioned_shapes has "
     "no config '65'; pick one of ['128', '32', "),
    (["--dataset", "captioned_folder", "--folder", "imgs", "--num_proc", "4"], "--num_proc only "
     "applies to --dataset captioned_shapes (captioned_folder is built in one process); drop "
     "it."),
    # built in this one process without a word
    (["--dataset", "captioned_shapes/tiny_32", "--num_proc", "-2"], "--num_proc=-2 must be >= 0 "
     "(0 = automatic)."),
    # refused after the whole build
    (["--dataset", "captioned_folder", "--folder", "imgs", "--split", "test"], "--split test: "
     "captioned_folder has no split 'test'; give --split train."),
    (["--dataset", "captioned_shapes/colors_32", "--split", "holdout"], "--split holdout: "
     "captioned_shapes/colors_32 has no split 'holdout'; give --split train or test."),
    (["--dataset", "captioned_shapes", "--split", "val"], "--split val: captioned_shapes has no "
     "split 'val'; give --split train, test or holdout."),
])
def test_prepare_refuses_folder_flags_the_dataset_lacks_or_ignores(tmp_path, capsys, flags,
                                                                    error):
  """--folder and --image_size with another dataset (and --num_proc with any but
  captioned_shapes, a /CONFIG of captioned_folder or coco_captions) were ignored without a word
  (its build made); captioned_folder without --folder, an unknown dataset or captioned_shapes
  config were refused in the config's terms (data.folder, data.name, data.config)."""
  err = _usage_error(capsys, [*flags, "--data_dir", str(tmp_path / "tfds")])
  assert f": error: {error}" in err
  assert not (tmp_path / "tfds").exists()  # nothing was built


@pytest.mark.parametrize("preview", ["grid", "grid.pngx", ".", "grid.psd",  # PIL reads .psd only
                                     "grid.ico", "grid.ICNS"])  # written at icon sizes
def test_prepare_refuses_a_preview_it_cannot_save_before_building(tmp_path, capsys, preview):
  """A --preview without an image extension (or a folder) failed in PIL with a traceback after
  the build; now a one-line error before it. An icon's was saved shrunk (128x45) or stretched."""
  err = _usage_error(capsys, ["--dataset", "captioned_shapes/tiny_32", "--data_dir",
                              str(tmp_path / "tfds"), "--preview", str(tmp_path / preview)])
  assert ("is an icon, which PIL writes at icon sizes (the grid shrunk or stretched); name a .png "
          "file" if preview[-4:].lower() in (".ico", "icns") else
          "is not the name of an image file PIL can write; name a .png file") in err, err
  assert not (tmp_path / "tfds").exists()  # nothing was built


@pytest.mark.parametrize("preview", ["out/", "grid.png/"])
def test_a_preview_named_as_a_folder_is_refused_as_given(tmp_path, capsys, preview):
  """--preview grid.png/ (a folder's name) was saved as the file grid.png, and --preview out/
  was refused as 'out': expanding ~ (a Path) dropped the '/'."""
  path = f"{tmp_path}/{preview}"
  err = _usage_error(capsys, ["--dataset", "captioned_shapes/tiny_32", "--data_dir",
                              str(tmp_path / "tfds"), "--preview", path])
  assert f"error: --preview {path!r} is not the name of an image file PIL can write" in err, err
  assert not (tmp_path / "tfds").exists()  # nothing was built


def test_prepare_refuses_a_blank_preview_before_building(tmp_path, capsys):
  """--preview= (e.g. --preview=$GRID with GRID unset) built the dataset and wrote no grid,
  without a word."""
  err = _usage_error(capsys, ["--dataset", "captioned_shapes/tiny_32", "--data_dir",
                              str(tmp_path / "tfds"), "--preview="])
  assert ("error: --preview is blank (e.g. --preview=$FILE with FILE unset); name the .png file "
          "for the grid, or drop the flag.") in err
  assert not (tmp_path / "tfds").exists()  # nothing was built


def test_prepare_refuses_a_preview_folder_no_file_can_be_made_in_before_building(tmp_path,
                                                                                  capsys):
  """A --preview in a folder whose mode allows writing but where the kernel refuses a new file
  (/proc, /sys) passed os.access as root, so the dataset was built and the grid then failed to
  save. Now a file is made and removed there first."""
  err = _usage_error(capsys, ["--dataset", "captioned_shapes/tiny_32", "--data_dir",
                              str(tmp_path / "tfds"), "--preview", "/proc/llmimg_nope.png"])
  assert re.search(r"error: --preview '/proc/llmimg_nope\.png': cannot write into /proc "
                   r"\((FileNotFoundError|PermissionError): .+\); name an image file in a "
                   r"folder you can write\.", err), err
  assert not (tmp_path / "tfds").exists()  # nothing was built


def test_prepare_refuses_a_blank_data_dir_before_building(tmp_path, capsys, monkeypatch):
  """--data_dir= (e.g. --data_dir=$DIR with DIR unset) built into $TFDS_DATA_DIR or
  ~/tensorflow_datasets, and --data_dir=' ' into a folder ' ' here, without a word."""
  monkeypatch.setenv("LLMIMG_DATA_DIR", str(tmp_path / "default"))
  monkeypatch.chdir(tmp_path)
  for blank in ("", " "):
    err = _usage_error(capsys, ["--dataset", "captioned_shapes/tiny_32", f"--data_dir={blank}"])
    assert ("error: --data_dir is blank (e.g. --data_dir=$DIR with DIR unset); name the TFDS "
            "data directory, or drop the flag") in err
  assert list(tmp_path.iterdir()) == []  # nothing was built


def test_prepare_refuses_a_preview_inside_the_folder(tmp_path, capsys, monkeypatch):
  """`prepare --folder . --preview grid.png` (the README's flag, run in the folder) wrote the grid
  into the folder: every later load warned that the folder changed since its build (delete it,
  start a new workdir), and a rebuild counted the grid as an uncaptioned image."""
  folder = tmp_path / "imgs"
  (folder / "sub").mkdir(parents=True)
  (folder / "captions.csv").write_text("file,caption\n")
  monkeypatch.chdir(folder)
  for preview in ("grid.png", "sub/grid.png", str(folder / "grid.png")):
    err = _usage_error(capsys, ["--dataset", "captioned_folder", "--folder", ".", "--data_dir",
                                str(tmp_path / "tfds"), "--preview", preview])
    assert (f"error: --preview {preview!r} is inside --folder . (or a folder linked into it): "
            "the grid would be an image added to the folder") in err
  assert not (tmp_path / "tfds").exists() and not (folder / "grid.png").exists()
  assert not output_files.inside(tmp_path / "imgs_grid.png", folder)  # a sibling


def test_prepare_makes_the_preview_folder(shapes_cfg, tmp_path):
  out = tmp_path / "new" / "folder" / "grid.png"
  report = prepare.main(["--dataset", "captioned_shapes/tiny_32", "--data_dir",
                         shapes_cfg.data_dir, "--preview", str(out)])
  assert report["preview"] == str(out)
  with Image.open(out) as grid:
    assert grid.width == 4 * 160


def test_prepare_expands_the_home_in_the_preview(shapes_cfg, tmp_path, monkeypatch):
  """--preview=~/grid.png (no shell expands ~ after '=') wrote ./~/grid.png, a folder named '~'
  in the current directory; --data_dir and --folder expanded it, as every other path flag."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.chdir(tmp_path)
  report = prepare.main(["--dataset", "captioned_shapes/tiny_32", "--data_dir",
                         shapes_cfg.data_dir, "--preview=~/grid.png"])
  assert report["preview"] == str(tmp_path / "home" / "grid.png")
  with Image.open(tmp_path / "home" / "grid.png") as grid:
    assert grid.width == 4 * 160
  assert not (tmp_path / "~").exists()


def test_prepare_refuses_an_existing_preview_unless_overwrite(shapes_cfg, tmp_path, capsys):
  """--preview replaced an existing file without a word (every other output of the project is
  refused unless an overwrite flag); now refused before the build, and --overwrite replaces it
  in one rename."""
  out = tmp_path / "grid.png"
  out.write_bytes(b"my earlier grid")
  flags = ["--dataset", "captioned_shapes/tiny_32", "--data_dir", shapes_cfg.data_dir,
           "--preview", str(out)]
  err = _usage_error(capsys, flags)
  assert (f"error: --preview {str(out)!r} exists; remove it, name a new file, or pass "
          "--overwrite to replace it.") in err
  assert out.read_bytes() == b"my earlier grid"
  assert prepare.main([*flags, "--overwrite"])["preview"] == str(out)
  with Image.open(out) as grid:
    assert grid.width == 4 * 160
  assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary file left
  # --overwrite without --preview would be ignored
  err = _usage_error(capsys, flags[:-2] + ["--overwrite"])
  assert "--overwrite only applies with --preview" in err


def test_coco_to_example_mapping():
  ex = {"image": np.zeros((5, 7, 3), np.uint8), "image/id": 3,
        "captions": {"id": np.array([1, 2]), "text": np.array([b"a cat", b"a dog"], object)}}
  out = coco.coco_to_example(ex)
  assert out["image"].shape == (5, 7, 3) and out["captions"] == [b"a cat", b"a dog"]
  gray = coco.coco_to_example({"image": np.zeros((5, 7, 1), np.uint8), "captions": ["x"]})
  assert gray["image"].shape == (5, 7, 3)


def test_coco_without_tensorflow_names_the_tf_extra(tmp_path, monkeypatch):
  monkeypatch.setattr(coco, "tensorflow_available", lambda: False)  # as without the `tf` extra
  cfg = pipeline.default_data_config()
  cfg.update(name="coco_captions", data_dir=str(tmp_path), image_size=32)
  with pytest.raises(ImportError, match=r"`tf` extra.*llmimg_jax\[tf\]"):
    pipeline.load_source(cfg)


def test_coco_without_tensorflow_is_a_config_error_before_anything_loads(tmp_path, monkeypatch,
                                                                         capsys):
  """train.py's config check and prepare refused a coco run without the `tf` extra only when
  the build started, with an ImportError traceback; now both print the hint in one line."""
  from configs.coco_256 import get_config  # pylint: disable=g-import-not-at-top
  from llmimg_jax.train.config import validate  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(coco, "tensorflow_available", lambda: False)  # as without the `tf` extra
  config = get_config()
  config.data.data_dir = str(tmp_path)
  with pytest.raises(ValueError, match=r"`tf` extra.*llmimg_jax\[tf\]"):
    validate(config, 1)
  err = _usage_error(capsys, ["--dataset", "coco_captions", "--data_dir", str(tmp_path)])
  assert "`tf` extra" in err
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("error, why", [
    (ConnectionError("HTTPConnectionPool(host='images.cocodataset.org', port=80): Max retries "
                     "exceeded\n(Failed to resolve 'images.cocodataset.org')"),
     r"ConnectionError: .*Failed to resolve.*images.cocodataset.org"),
    # a full disk as the array_record writer raises it (seen on a 1 MB tmpfs: a traceback)
    (RuntimeError('Failed to finalize writing of split "train": write() failed: No space left on '
                  "device; writing coco_captions-train.array_record-00003-of-00064"),
     r"RuntimeError: Failed to finalize writing .* No space left on device"),
], ids=["offline", "full_disk"])
def test_a_failed_coco_download_is_one_clear_error(tmp_path, monkeypatch, capsys, error, why):
  """Offline, TFDS's requests ConnectionError reached train.py and prepare as a traceback minutes
  into the run, as did a full disk as the records were written; now each is one error naming the
  data_dir, the site and how to build elsewhere."""

  class FailingCoco:  # what TFDS's coco_captions builder does without a network or room
    builder_config = None
    url_infos = None  # no URLs to probe first: the build's own error

    def is_prepared(self):
      return False

    def download_and_prepare(self):
      raise error

  monkeypatch.setattr(coco, "tensorflow_available", lambda: True)
  monkeypatch.setattr(pipeline, "builder", lambda data_cfg: FailingCoco())
  cfg = pipeline.default_data_config()
  cfg.update(name="coco_captions", data_dir=str(tmp_path), image_size=32)
  with pytest.raises(coco.CocoDownloadError, match=(
      rf"coco_captions could not be downloaded or built in data.data_dir='{tmp_path}' "
      rf"\({why}.*--data_dir DIR.* \(with ~100 GB free")):
    pipeline.load_source(cfg)
  err = _usage_error(capsys, ["--dataset", "coco_captions", "--data_dir", str(tmp_path)])
  assert "could not be downloaded" in err


@pytest.mark.tf
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                    reason="needs the `tf` extra: TFDS's coco_captions builder imports TensorFlow")
def test_coco_builder_finds_its_download_checksums(tmp_path):
  """What download_and_prepare reads first: it raised ModuleNotFoundError (importlib_resources)
  on Python >= 3.9, so COCO could never be built (mock_data below skips the build). Skipped only
  without TensorFlow: the `tf` extra must bring importlib_resources too."""
  builder = coco.coco_builder(str(tmp_path))
  assert any("cocodataset.org" in url for url in builder.url_infos)
  # The size the error states: every coco/2014 archive (TFDS's Coco._split_generators fetches the
  # test2014 and test2015 sets too) and Karpathy's captions, 40.4 GB. It said ~20 GB.
  fetched = [info.size for url, info in builder.url_infos.items() if coco.FETCHED.search(url)]
  assert len(fetched) == 8
  message = str(coco._download_error("DIR", "why"))
  assert f"The first build downloads ~{sum(fetched) / 1e9:.0f} GB from" in message, message
  # The archives the README says to copy by hand for an offline build.
  readme = (Path(__file__).parents[2] / "README.md").read_text()
  names = re.findall(r"`([a-z_0-9]+\.zip)`", readme.split("DATA_DIR/downloads/manual/")[1][:400])
  assert sorted(names) == sorted(info.filename for url, info in builder.url_infos.items()
                                 if coco.FETCHED.search(url))


@pytest.mark.tf
@pytest.mark.skipif(not coco.tensorflow_available(),
                    reason="needs the `tf` extra: TFDS's coco_captions builder imports TensorFlow")
def test_coco_through_the_pipeline_with_mock_data(tmp_path, tokenizer, monkeypatch):
  import tensorflow_datasets as tfds
  monkeypatch.setattr(coco, "_check_hosts_answer", lambda *_: None)  # mock_data downloads nothing
  cfg = pipeline.default_data_config()
  cfg.update(name="coco_captions", data_dir=str(tmp_path), image_size=32)
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    source = pipeline.load_source(cfg, "train")
    ex = source[0]
    assert ex["image"].dtype == np.uint8 and ex["image"].ndim == 3 and ex["image"].shape[-1] == 3
    assert ex["captions"] and all(isinstance(c, str) for c in ex["captions"])
    batch = next(pipeline.make_iterator(cfg, tokenizer, batch_size_per_host=4, seed=0,
                                        process_index=0, process_count=1, source=source))
  assert batch["image"].shape == (4, 32, 32, 3) and batch["input_ids"].shape == (4, 64)


def test_prepare_of_a_folder_builds_what_folder_64_reads_by_default(tmp_path):
  """Without --image_size prepare stored 64px images; configs/folder_64.py reads a 72px build
  (random crops), so train.py built the folder again."""
  spec = importlib.util.spec_from_file_location(
      "folder_64", Path(__file__).parents[2] / "configs" / "folder_64.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  folder = tmp_path / "imgs"
  folder.mkdir()
  for i in range(2):
    Image.new("RGB", (80, 80), (100 * i, 0, 0)).save(folder / f"{i}.png")
  (folder / "captions.jsonl").write_text(
      '{"file": "0.png", "caption": "black"}\n{"file": "1.png", "caption": "red"}\n')
  data = module.get_config().data
  data.folder, data.data_dir = str(folder), str(tmp_path / "tfds")
  assert not pipeline.is_built(data)
  prepare.main(["--dataset", "captioned_folder", "--folder", str(folder), "--data_dir",
                str(tmp_path / "tfds")])
  assert pipeline.is_built(data)
