"EndoScapes2023 (Seg50): the reader, colour images through augmentation, U-Net, rectifier and evaluation, and its bad inputs."
import json, shutil
import numpy as np, pytest, torch
from PIL import Image, ImageEnhance
from scipy import ndimage
from diffseg_edu.frames import ENDOSCAPES_CLASSES, EndoscapesFrames, check_label_map, sequence_of, write_endoscapes_sample
from diffseg_edu.data import IGNORE_INDEX, DataError, WeakStrongAugment, enhance, gaussian_blur, split_by_group
from diffseg_edu.datasets import dataset_info, dataset_spec
from diffseg_edu.cli import data_main as data_main
from diffseg_edu.metrics import Evaluation, MetricError, predict_volume
from diffseg_edu.cli import eval_main as eval_main
from diffseg_edu.config import METHODS, make_config
from diffseg_edu.train import train
from diffseg_edu.cli import bench_main as bench_main
from diffseg_edu.unet import UNet
from diffseg_edu.checkpoints import load_model

@pytest.fixture(scope="module")
def endo_root(tmp_path_factory):
    return write_endoscapes_sample(tmp_path_factory.mktemp("endo") / "endoscapes")

def fresh(tmp_path):
    return write_endoscapes_sample(tmp_path / "endoscapes", videos=(2, 1, 1), n_frames=3, every=2, size=(24, 32))

def test_frames_videos_and_colour(endo_root):
    fr = EndoscapesFrames(endo_root, "train")
    assert len(fr) == 18 and sum(fr.has_label) == 6 and fr.names[:2] == ["1/100", "1/125"]
    item = fr[0]
    assert item["image"].shape == (3, 48, 64) and item["image"].dtype == np.float32 and 0 <= item["image"].min() <= item["image"].max() <= 1
    assert set(np.unique(item["label"])) == set(range(7))
    assert "label" not in fr[1]                                                          # unannotated: the unlabelled pool
    lab, unl = split_by_group(fr.names, 1, sequence_of, fr.has_label)
    assert {sequence_of(fr.names[i]) for i in lab} == {"1"} and len(lab) == 2 and len(unl) == 16
    info = dataset_info("endoscapes", endo_root, 2)
    assert info["in_channels"] == 3 and info["splits"]["val"] == {"frames": 6, "annotated": 2, "sequences": 1}
    assert info["labeled_frames"] == 4 and info["classes"] == list(ENDOSCAPES_CLASSES)

def test_sample_is_deterministic(tmp_path):
    a, b = (write_endoscapes_sample(tmp_path / k, videos=(1, 1, 1), n_frames=2, size=(16, 16), seed=3) for k in "ab")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and not p.name.startswith(".lock"))
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)

@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_colour_frames(endo_root, tmp_path, method):
    cfg = make_config("smoke", method=method, dataset="endoscapes", root=str(endo_root), labeled_patients=2, img_size=32)
    summary = train(cfg, tmp_path / method, progress=False)
    val = summary["metrics"]["val"]
    assert summary["iteration"] == 6 and set(val["per_class"]["dice"]) == set(ENDOSCAPES_CLASSES[1:])
    assert val["averaged"].startswith("over sequences") and {c["group"] for c in val["per_case"]} == {"4"}
    model, _ = load_model(tmp_path / method / "best.pt")
    assert model.config["in_channels"] == 3                                              # the U-Net takes RGB

def test_evaluation_averages_frames_per_sequence_first():
    values = np.array([1.0, 1.0, 1.0, 0.0]).reshape(4, 1, 1)                             # 3 frames of video a, 1 of video b
    per_frame = Evaluation(["a/1", "a/2", "a/3", "b/1"], ["x"], ("dice",), values)
    per_video = Evaluation(["a/1", "a/2", "a/3", "b/1"], ["x"], ("dice",), values, groups=["a", "a", "a", "b"])
    assert per_frame.mean()["dice"] == 0.75 and per_video.mean()["dice"] == 0.5
    nan = Evaluation(["a/1", "b/1", "b/2"], ["x", "y"], ("dice",), np.array([[[1.0], [np.nan]], [[0.0], [np.nan]], [[0.5], [0.2]]]),
                     groups=["a", "b", "b"])
    assert nan.per_class()["dice"] == pytest.approx([0.625, 0.2])                        # a class never scored in a video is left out there

def test_predict_colour_images_and_volumes():
    torch.manual_seed(0); net = UNet(in_channels=3, n_classes=7).eval()
    frame = np.random.default_rng(0).random((3, 40, 56)).astype(np.float32)
    assert predict_volume(net, frame, (32, 32)).shape == (40, 56)
    assert predict_volume(net, np.stack([frame, frame]), (32, 32)).shape == (2, 40, 56)
    with pytest.raises(MetricError, match=r"\(3, H, W\).*got shape \(40, 56\)"): predict_volume(net, frame[0], (32, 32))

@pytest.mark.parametrize("op, pil", [(0, ImageEnhance.Contrast), (1, ImageEnhance.Brightness), (2, ImageEnhance.Sharpness)])
def test_colour_enhancements_agree_with_pil(op, pil):
    rng = np.random.default_rng(op)
    img8 = ndimage.gaussian_filter(rng.integers(0, 256, (48, 48, 3)).astype(float), (1.5, 1.5, 0)).astype(np.uint8)
    ref = np.asarray(pil(Image.fromarray(img8)).enhance(1.07)).astype(np.float32) / 255
    ours = enhance(torch.from_numpy(img8 / 255.0).float().permute(2, 0, 1)[None], op, torch.tensor([1.07]))[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - ref).max() <= 1.5 / 255

def test_colour_blur_and_views_share_geometry(endo_root):
    x = torch.rand(2, 3, 20, 20)
    blurred = gaussian_blur(x, torch.tensor([0.8, 0.0]))
    assert torch.allclose(blurred[1], x[1]) and torch.allclose(blurred[0, 1], gaussian_blur(x[:1, 1:2], torch.tensor([0.8]))[0, 0])
    label = torch.zeros(4, 20, 20, dtype=torch.long); label[:, 4:9, 2:15] = 3
    image = torch.stack([label.float() / 6, label.float() / 6 * 0.5, torch.zeros(4, 20, 20)], 1)     # the image encodes the label
    out = WeakStrongAugment()(image, label, torch.tensor([True, True, False, False]), torch.Generator().manual_seed(1))
    assert out["image_weak"].shape == (4, 3, 20, 20)
    assert torch.equal((out["image_weak"][:2, 0] * 6).round().long(), out["label"][:2])
    assert (out["label"][2:] == IGNORE_INDEX).all()

def test_commands_on_endoscapes(endo_root, tmp_path, capsys):
    assert data_main(["info", "--dataset", "endoscapes", "--root", str(endo_root)]) == 0
    assert json.loads(capsys.readouterr().out)["in_channels"] == 3
    assert data_main(["preview", "--dataset", "endoscapes", "--root", str(endo_root), "--n", "2", "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0
    assert data_main(["info", "--dataset", "endoscapes"]) == 2 and "needs --root" in capsys.readouterr().err
    assert bench_main(["acdc", "--dataset", "endoscapes", "--root", str(endo_root), "--preset", "smoke", "--labeled-patients", "2",
                       "--methods", "supervised", "--seeds", "0", "--img-size", "32", "--out", str(tmp_path / "bench")]) == 0
    table = (tmp_path / "bench" / "endoscapes_p2_smoke.md").read_text()
    assert "2 labelled sequences" in table and "| supervised | test | 1 |" in table
    assert eval_main(["--ckpt", str(tmp_path / "bench" / "checkpoints" / "supervised_p2_s0.pt"), "--dataset", "endoscapes", "--root", str(endo_root),
                      "--split", "test", "--out", str(tmp_path / "ev.json")]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["averaged"].startswith("over sequences") and len(ev["per_case"]) == 2

def test_label_map_checked(tmp_path):
    root = fresh(tmp_path)
    (root / "seg_label_map.txt").write_text("background\ncystic plate\ncalot triangle\ncystic duct\ncystic artery\ngallbladder\ntool\n")
    with pytest.raises(DataError, match=r"seg_label_map.txt: .*id 3 is 'cystic duct' here but 'cystic artery'"): EndoscapesFrames(root)
    (root / "seg_label_map.txt").write_text("1: cystic_plate\n2: hepatocystic_triangle_dissection\n3: cystic_artery\n4: cystic_duct\n5: gallbladder\n")
    with pytest.raises(DataError, match=r"id 6 \('tool'\) is missing"): EndoscapesFrames(root)
    (root / "seg_label_map.txt").write_text("cystic plate\nCalot triangle\ncystic artery\ncystic duct\ngallbladder\ntool\n")   # ids from 1
    assert check_label_map(root / "seg_label_map.txt")[6] == "tool" and len(EndoscapesFrames(root)) == 6

def test_bad_frames_and_masks(tmp_path):
    root = fresh(tmp_path)
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(root / "train_seg" / "1_125.jpg")                       # grey
    with pytest.raises(DataError, match=r"1_125.jpg: a L image with 1 channel\(s\); .* RGB \(3\)"): EndoscapesFrames(root).read(1, False)
    mask = np.zeros((24, 32, 3), np.uint8); mask[0, 0] = (2, 2, 3)
    Image.fromarray(mask).save(root / "semseg" / "1_100.png")
    with pytest.raises(DataError, match="1_100.png: the mask's channels differ"): EndoscapesFrames(root).read(0)
    Image.fromarray(np.full((24, 32, 3), 7, np.uint8)).save(root / "semseg" / "1_100.png")
    with pytest.raises(DataError, match=r"1_100.png: label values \[7\] outside 0..6"): EndoscapesFrames(root).read(0)
    (root / "train_seg" / "1_x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"1_x.jpg: expected a frame named <video>_<frame>.jpg"): EndoscapesFrames(root)

def test_bad_video_lists(tmp_path):
    root = fresh(tmp_path)
    (root / "val_seg_vids.txt").write_text("3.000000000000000000e+00\n1.000000000000000000e+00\n")
    with pytest.raises(DataError, match=r"train_seg: video\(s\) \[1\] are also listed in .*val_seg_vids.txt"): EndoscapesFrames(root, "train")
    (root / "val_seg_vids.txt").write_text("3\n")
    (root / "train_seg_vids.txt").write_text("1\n")
    with pytest.raises(DataError, match=r"train_seg: video\(s\) \[2\] are not in .*train_seg_vids.txt"): EndoscapesFrames(root, "train")
    (root / "train_seg_vids.txt").write_text("1\n2\n9\n")
    with pytest.raises(DataError, match=r"train_seg_vids.txt: video\(s\) \[9\] have no frames"): EndoscapesFrames(root, "train")
    (root / "train_seg_vids.txt").write_text("1\n2\n2.0\n")
    with pytest.raises(DataError, match=r"video\(s\) \[2\] listed more than once"): EndoscapesFrames(root, "train")
    (root / "train_seg_vids.txt").write_text("1\n2\n")
    (root / "train_seg" / "2_150.jpg").unlink()
    with pytest.raises(DataError, match=r"2_150.png: an annotated frame of this split's videos without its image"): EndoscapesFrames(root, "train")
    shutil.rmtree(root / "test_seg")
    with pytest.raises(DataError, match="test_seg: no such EndoScapes split folder"): dataset_spec("endoscapes").eval_cases(root, "test")

def test_sample_rewrite_leaves_no_stale_frames_and_checks_its_arguments(tmp_path):
    root = write_endoscapes_sample(tmp_path / "e", videos=(2, 1, 1), n_frames=3, every=2, size=(16, 16))
    write_endoscapes_sample(root, videos=(1, 1, 1), n_frames=2, every=1, size=(16, 16))
    assert len(EndoscapesFrames(root, "train")) == 2 and sorted(p.name for p in (root / "val_seg").iterdir()) == ["2_100.jpg", "2_125.jpg"]
    for bad in (dict(every=0), dict(videos=(1, 1)), dict(size=16), dict(n_frames=0)):
        with pytest.raises(DataError, match="the EndoScapes sample needs"): write_endoscapes_sample(tmp_path / "bad", **bad)

def test_bench_refuses_set_for_what_has_its_own_option(endo_root, tmp_path, capsys):
    args = ["acdc", "--dataset", "endoscapes", "--root", str(endo_root), "--preset", "smoke", "--set", "dataset=mosxav",
            "--out", str(tmp_path / "b")]
    assert bench_main(args) == 2 and "--set dataset: use --dataset" in capsys.readouterr().err
