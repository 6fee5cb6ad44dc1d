"""Frame data sets: files with another extension are read or refused (never dropped silently), and masks in every PNG mode
read the same labels (or are refused naming the file and the mode)."""
import json, shutil
import numpy as np, pytest
from PIL import Image
from diffseg_edu.data import DataError, IGNORE_INDEX
from diffseg_edu.frames import (MOSXAV_COLOURS, EndoscapesFrames, MOSXAVFrames, mask_ids, read_endoscapes_mask,
                                read_mosxav_mask, write_endoscapes_sample, write_mosxav_sample)
from diffseg_edu.cli import data_main, eval_main

from cli_checks import one_line_error

@pytest.fixture
def mosxav(tmp_path):
    return write_mosxav_sample(tmp_path / "MOSXAV_Dataset", n_train=1, n_val=1, n_test=1, n_frames=10, size=32)

def val_dirs(root):
    return root / "trainval" / "JPEGImages" / "v01", root / "trainval" / "Annotations_Semantic" / "v01"

def mode_variants(label: np.ndarray, rgb: np.ndarray) -> dict:
    "The same mask in each PNG mode a mask arrives in (`label`: the ids, `rgb`: the class colours)."
    grey = Image.fromarray(label.astype(np.uint8))
    index = Image.fromarray(label.astype(np.uint8), "P")
    index.putpalette([c for k in range(256) for c in ((37 * k) % 256, (91 * k + 17) % 256, (53 * k + 5) % 256)])
    return {"RGB": Image.fromarray(rgb), "RGBA": Image.fromarray(rgb).convert("RGBA"),
            "P adaptive": Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE), "P index": index,
            "L": grey, "LA": grey.convert("LA"), "I;16": Image.fromarray(label.astype(np.uint16))}

# ---- every mask mode, both data sets

def mosxav_label(shape=(24, 32)):
    label = np.zeros(shape, np.uint8)
    label[4:10, :] = 1; label[:, 3:6] = 2; label[15:18, 10:20] = 3; label[20:, 25:] = 4; label[:3, :3] = 5
    return label

@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P adaptive", "P index", "L", "LA", "I;16"])
def test_mosxav_mask_in_every_mode(tmp_path, mode):
    label = mosxav_label()
    colour_of = {c: k for k, c in MOSXAV_COLOURS.items()}
    rgb = np.array([colour_of[v] for v in range(6)], np.uint8)[label]
    path = tmp_path / "00000.png"
    mode_variants(label, rgb)[mode].save(path)
    assert Image.open(path).mode == mode.split()[0]
    expected = np.where(label == 5, IGNORE_INDEX, label)
    np.testing.assert_array_equal(read_mosxav_mask(path, 5, label.shape), expected)

def endoscapes_label(shape=(24, 32)):
    label = np.zeros(shape, np.uint8)
    for k in range(1, 7): label[3 * k:3 * k + 3, 2 * k:] = k
    return label

@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P adaptive", "P index", "L", "LA", "I;16"])
def test_endoscapes_mask_in_every_mode(tmp_path, mode):
    label = endoscapes_label()
    path = tmp_path / "1_100.png"
    mode_variants(label, np.repeat(label[..., None], 3, -1))[mode].save(path)
    np.testing.assert_array_equal(read_endoscapes_mask(path, 7, label.shape), label)

@pytest.mark.parametrize("make", [lambda a: Image.new("CMYK", a.shape[::-1]), lambda a: Image.fromarray(a.astype(np.float32)),
                                  lambda a: Image.fromarray(a).convert("YCbCr")])
def test_other_modes_are_refused_naming_file_and_mode(make):
    im = make(mosxav_label())
    for colours in (MOSXAV_COLOURS, {(v, v, v): v for v in range(256)}):
        with pytest.raises(DataError, match=rf"some/mask.png: a mask in mode {im.mode}"):
            mask_ids(im, "some/mask.png", colours)

def test_mask_that_is_not_a_png_is_refused(tmp_path):
    path = tmp_path / "00000.png"
    Image.new("CMYK", (32, 24)).save(path, format="TIFF")          # a TIFF behind a .png name
    with pytest.raises(DataError, match=r"00000.png: a TIFF file; a mask must be a PNG"): read_mosxav_mask(path)
    Image.fromarray(endoscapes_label()).save(path, format="JPEG")
    with pytest.raises(DataError, match=r"00000.png: a JPEG file; a mask must be a PNG"): read_endoscapes_mask(path)

def test_coloured_endoscapes_mask_and_unknown_mosxav_colour_stay_errors(tmp_path):
    path = tmp_path / "m.png"
    Image.fromarray(np.full((8, 8, 3), (1, 2, 3), np.uint8)).save(path)
    with pytest.raises(DataError, match=r"m.png: the mask's channels differ"): read_endoscapes_mask(path)
    with pytest.raises(DataError, match=r"m.png: colours \[\(1, 2, 3\)\] are not MOSXAV classes"): read_mosxav_mask(path)

def test_palette_mask_of_a_mosxav_tree(tmp_path):
    "An RGB tree converted to adaptive palettes (same colours, other indices) reads the same labels."
    root = write_mosxav_sample(tmp_path / "m", n_train=1, n_val=1, n_test=1, n_frames=5, size=32, rgb_masks=True)
    before = MOSXAVFrames(root, "test")
    labels = [before[i]["label"] for i in range(len(before))]
    for m in (root / "test" / "Annotations_Semantic").rglob("*.png"):
        Image.open(m).convert("P", palette=Image.ADAPTIVE).save(m)
    after = MOSXAVFrames(root, "test")
    for i, lab in enumerate(labels): np.testing.assert_array_equal(after[i]["label"], lab)

# ---- renamed extensions

def test_mosxav_renamed_extensions_are_read(mosxav):
    frames, masks = val_dirs(mosxav)
    (frames / "00001.jpg").rename(frames / "00001.JPG"); (frames / "00002.jpg").rename(frames / "00002.jpeg")
    (frames / "00005.jpg").rename(frames / "00005.JPEG"); (masks / "00005.png").rename(masks / "00005.PNG")
    val = MOSXAVFrames(mosxav, "val")
    assert (len(val), sum(val.has_label)) == (10, 2)
    assert val.names[:3] == ["v01/00000", "v01/00001", "v01/00002"] and val[5]["label"].shape == (32, 32)
    assert val.summary() == "MOSXAV val: 10 frames, 2 annotated, 1 sequence"
    assert MOSXAVFrames(mosxav, "train").summary() == "MOSXAV train: 10 frames, 2 annotated, 1 sequence"

def test_mosxav_duplicates_orphans_and_jpeg_masks_are_refused(mosxav):
    frames, masks = val_dirs(mosxav)
    shutil.copy(frames / "00003.jpg", frames / "00003.JPG")
    with pytest.raises(DataError, match=r"a second file for frame '00003'") as e: MOSXAVFrames(mosxav, "val")
    assert str(frames / "00003.JPG") in str(e.value) and str(frames / "00003.jpg") in str(e.value)
    (frames / "00003.JPG").unlink()
    shutil.copy(masks / "00005.png", masks / "00005.PNG")
    with pytest.raises(DataError, match=r"a second file for mask '00005'") as e: MOSXAVFrames(mosxav, "val")
    assert str(masks / "00005.PNG") in str(e.value)
    (masks / "00005.PNG").unlink()
    (frames / "00005.jpg").unlink()
    with pytest.raises(DataError, match=r"00005.png: a mask without its frame"): MOSXAVFrames(mosxav, "val")
    shutil.copy(frames / "00004.jpg", frames / "00005.jpg")
    Image.open(masks / "00000.png").save(masks / "00003.jpg")
    with pytest.raises(DataError, match=r"00003.jpg: a mask file must be .png \(any case\); JPEG is lossy"):
        MOSXAVFrames(mosxav, "val")

def test_endoscapes_renamed_extensions_duplicates_and_jpeg_masks(tmp_path):
    root = write_endoscapes_sample(tmp_path / "endoscapes", videos=(1, 1, 1), n_frames=3, every=2, size=(24, 32))
    semseg, val_seg = root / "semseg", root / "val_seg"
    (semseg / "2_100.png").rename(semseg / "2_100.PNG")
    (val_seg / "2_125.jpg").rename(val_seg / "2_125.jpeg"); (val_seg / "2_150.jpg").rename(val_seg / "2_150.JPG")
    val = EndoscapesFrames(root, "val")
    assert (len(val), sum(val.has_label)) == (3, 2) and val.names == ["2/100", "2/125", "2/150"]
    assert val.summary() == "EndoScapes val: 3 frames, 2 annotated, 1 video"
    shutil.copy(val_seg / "2_150.JPG", val_seg / "2_150.png")
    with pytest.raises(DataError, match=r"a second file for frame '2_150'"): EndoscapesFrames(root, "val")
    (val_seg / "2_150.png").unlink()
    shutil.copy(semseg / "2_100.PNG", semseg / "2_100.png")
    with pytest.raises(DataError, match=r"a second file for mask '2_100'"): EndoscapesFrames(root, "val")
    (semseg / "2_100.png").unlink()
    Image.open(semseg / "2_100.PNG").convert("RGB").save(semseg / "2_125.jpg")
    with pytest.raises(DataError, match=r"semseg/2_125.jpg: a mask file must be .png"): EndoscapesFrames(root, "val")

# ---- through the commands

def info(root, capsys) -> tuple:
    code = data_main(["info", "--dataset", "mosxav", "--root", str(root)])
    out, err = capsys.readouterr()
    return code, out, err

def test_info_refuses_files_that_cannot_be_paired(mosxav, capsys):
    frames, masks = val_dirs(mosxav)
    shutil.copy(frames / "00003.jpg", frames / "00003.JPG")
    code, _, err = info(mosxav, capsys)
    assert code == 2
    one_line_error(err, "diffseg-data", frames / "00003.JPG", "a second file for frame")
    (frames / "00003.JPG").unlink()
    (frames / "00005.jpg").unlink()
    code, _, err = info(mosxav, capsys)
    assert code == 2
    one_line_error(err, masks / "00005.png", "a mask without its frame")
    shutil.copy(frames / "00004.jpg", frames / "00005.jpg")
    Image.open(masks / "00000.png").save(masks / "00002.jpg")
    code, _, err = info(mosxav, capsys)
    assert code == 2
    one_line_error(err, masks / "00002.jpg", "must be .png")
    (masks / "00002.jpg").unlink()
    (masks / "00005.png").rename(masks / "00005.PNG")
    code, out, _ = info(mosxav, capsys)
    assert code == 0 and json.loads(out)["splits"]["val"] == {"frames": 10, "annotated": 2, "sequences": 1}

@pytest.fixture
def ckpt(tmp_path):
    from diffseg_edu.checkpoints import save_checkpoint
    from diffseg_edu.unet import UNet
    return save_checkpoint(tmp_path / "m.pt", UNet(n_classes=5, widths=(4, 8, 8, 8, 8)), img_size=32)

def evaluate(ckpt, root, out, capsys) -> tuple:
    code = eval_main(["--ckpt", str(ckpt), "--dataset", "mosxav", "--root", str(root), "--split", "val", "--device", "cpu",
                      "--out", str(out), "--overwrite"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err, (json.loads(out.read_text()) if code == 0 else None)

def test_eval_counts_renamed_masks(tmp_path, capsys, ckpt, mosxav):
    frames, masks = val_dirs(mosxav)
    code, out, err, ref = evaluate(ckpt, mosxav, tmp_path / "a.json", capsys)
    assert code == 0 and "(2 cases" in out, err
    (masks / "00005.png").rename(masks / "00005.PNG")                      # used to vanish: 1 case instead of 2
    (frames / "00000.jpg").rename(frames / "00000.JPG")
    code, out, err, ev = evaluate(ckpt, mosxav, tmp_path / "b.json", capsys)
    assert code == 0 and "(2 cases" in out, err
    assert "read MOSXAV val: 10 frames, 2 annotated, 1 sequence" in out            # the count is printed: a loss would show
    assert [c["name"] for c in ev["per_case"]] == ["v01/00000", "v01/00005"]

def preview(root, out, capsys) -> bytes:
    "The overlay grid `diffseg-data preview` draws of the two annotated val frames: it shows the labels as read."
    code = data_main(["preview", "--dataset", "mosxav", "--root", str(root), "--split", "val", "--n", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    return out.read_bytes()

def test_preview_reads_masks_in_every_mode(tmp_path, capsys):
    root = write_mosxav_sample(tmp_path / "MOSXAV_Dataset", n_train=1, n_val=1, n_test=1, n_frames=10, size=32, rgb_masks=True)
    _, masks = val_dirs(root)
    ref = preview(root, tmp_path / "ref.png", capsys)
    ids = {n: read_mosxav_mask(masks / n) for n in ("00000.png", "00005.png")}
    for n in ids: Image.open(masks / n).convert("P", palette=Image.ADAPTIVE).save(masks / n)   # same colours, new indices
    assert preview(root, tmp_path / "p.png", capsys) == ref
    Image.fromarray(ids["00000.png"].astype(np.uint16)).save(masks / "00000.png")               # 16-bit grey
    Image.fromarray(ids["00005.png"].astype(np.uint8)).convert("LA").save(masks / "00005.png")  # grey + alpha
    assert preview(root, tmp_path / "g.png", capsys) == ref
    Image.fromarray(((ids["00000.png"] + 1) % 5).astype(np.uint8)).save(masks / "00000.png")  # other labels: seen
    assert preview(root, tmp_path / "x.png", capsys) != ref

def test_eval_refuses_masks_it_cannot_read(tmp_path, capsys, ckpt, mosxav):
    frames, masks = val_dirs(mosxav)
    Image.new("CMYK", (32, 32)).save(masks / "00005.png", format="TIFF")
    code, _, err, _ = evaluate(ckpt, mosxav, tmp_path / "e.json", capsys)
    assert code == 2
    one_line_error(err, "diffseg-eval", masks / "00005.png", "a TIFF file; a mask must be a PNG")
    Image.fromarray(np.full((32, 32, 3), (1, 2, 3), np.uint8)).save(masks / "00005.png")
    code, _, err, _ = evaluate(ckpt, mosxav, tmp_path / "e.json", capsys)
    assert code == 2
    one_line_error(err, masks / "00005.png", "are not MOSXAV classes")
    assert not (tmp_path / "e.json").exists()
