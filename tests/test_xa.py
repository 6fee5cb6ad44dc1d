"""Xi et al.'s setting: the angiography phantom in MOSXAV's layout, training every method on 2-D frame data with 5 classes,
'Others' ignored by every loss and metric, and clear errors for bad MOSXAV trees."""
import hashlib, shutil
from pathlib import Path

import numpy as np, pytest, torch
from PIL import Image

from diffseg_edu.datasets import DATASETS, dataset_spec
from diffseg_edu.data import IGNORE_INDEX, DataError
from diffseg_edu.frames import MOSXAVFrames, write_mosxav_sample
from diffseg_edu.phantoms import write_xa_synthetic
from diffseg_edu.metrics import evaluate, multiclass_metrics
from diffseg_edu.losses import segmentation_losses
from diffseg_edu.config import METHODS, make_config
from diffseg_edu.train import train
from diffseg_edu.unet import supervised_loss

def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(str(f.relative_to(root)).encode()); h.update(f.read_bytes())
    return h.hexdigest()

@pytest.fixture(scope="module")
def xa_root(tmp_path_factory):
    return write_xa_synthetic(tmp_path_factory.mktemp("xa"), n_train=3, n_val=1, n_test=1, n_frames=10, size=64)

def test_phantom_is_deterministic_and_in_mosxav_layout(tmp_path, xa_root):
    a = write_xa_synthetic(tmp_path / "a", n_train=2, n_val=1, n_test=1, n_frames=6, size=64, seed=3)
    b = write_xa_synthetic(tmp_path / "b", n_train=2, n_val=1, n_test=1, n_frames=6, size=64, seed=3)
    c = write_xa_synthetic(tmp_path / "c", n_train=2, n_val=1, n_test=1, n_frames=6, size=64, seed=4)
    assert tree_digest(a) == tree_digest(b) != tree_digest(c)
    train_frames, test_frames = MOSXAVFrames(xa_root, "train"), MOSXAVFrames(xa_root, "test")
    assert len(train_frames) == 30 and sum(train_frames.has_label) == 6                     # every 5th frame annotated in trainval
    assert all(test_frames.has_label)                                                     # every frame in test
    labels = np.concatenate([train_frames.read(i)["label"].ravel() for i in range(30) if train_frames.has_label[i]])
    assert labels.max() <= 4 and (labels == 1).any() and (labels == 2).any()
    spec = dataset_spec("xa-synthetic")
    assert spec.n_classes == 5 and spec.classes == DATASETS["mosxav"].classes
    lab, unl = spec.labelled_split(train_frames, 1)
    assert {train_frames.names[i][:3] for i in lab} == {"v00"} and len(lab) == 2 and len(unl) == 28

@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_frames(xa_root, tmp_path, method):
    cfg = make_config("smoke", method=method, dataset="xa-synthetic", root=str(xa_root), labeled_patients=2, img_size=32)
    summary = train(cfg, tmp_path / method, progress=False)
    assert summary["iteration"] == 6 and {"val", "test"} <= set(summary["metrics"])
    assert set(summary["metrics"]["val"]["per_class"]["dice"]) == {"vessel", "contrast catheter", "catheter", "balloon"}

def test_others_change_no_loss_and_no_metric():
    "Pixels labelled 'Others' (IGNORE_INDEX) may be predicted as anything: no loss and no metric moves."
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 5, (2, 32, 32), generator=g)
    label[:, :8, :8] = IGNORE_INDEX                                                       # planted "Others"
    logits = torch.randn(2, 5, 32, 32, generator=g, requires_grad=True)
    other = logits.detach().clone(); other[:, :, :8, :8] = torch.randn(2, 5, 8, 8, generator=g) * 10
    other.requires_grad_(True)
    assert torch.allclose(supervised_loss(logits, label, 5), supervised_loss(other, label, 5))
    a = segmentation_losses(logits, logits, label, torch.tensor([True, False]), 1.0, "ignore")
    b = segmentation_losses(other, other, label, torch.tensor([True, False]), 1.0, "ignore")
    assert torch.allclose(a["sup"], b["sup"])
    supervised_loss(logits, label, 5).backward()
    assert logits.grad[:, :, :8, :8].abs().max() == 0                                      # no gradient reaches the planted pixels
    pred, pred2 = logits.argmax(1)[0].numpy(), other.argmax(1)[0].numpy()
    assert (pred[:8, :8] != pred2[:8, :8]).any()
    np.testing.assert_array_equal(multiclass_metrics(pred, label[0].numpy(), 5), multiclass_metrics(pred2, label[0].numpy(), 5))

def mosxav(tmp_path):
    return write_mosxav_sample(tmp_path / "MOSXAV_Dataset", n_train=2, n_val=1, n_test=1, n_frames=5, size=32)

def test_sequence_in_two_splits(tmp_path):
    root = mosxav(tmp_path)
    (root / "trainval" / "ImageSets" / "val.txt").write_text("v02\nv00\n")
    with pytest.raises(DataError, match=r"\['v00'\] are also listed in .*train.txt"): MOSXAVFrames(root, "val")

def test_frame_listed_without_file_and_unknown_mask_id(tmp_path):
    root = mosxav(tmp_path)
    (root / "trainval" / "ImageSets" / "train.txt").write_text("v00\nv01\nv09\n")
    with pytest.raises(DataError, match="sequence 'v09' has no frames"): MOSXAVFrames(root, "train")
    (root / "trainval" / "ImageSets" / "train.txt").write_text("v00\nv01\n")
    mask = root / "trainval" / "Annotations_Semantic" / "v00" / "00000.png"
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(mask)
    with pytest.raises(DataError, match=r"00000.png: label values \[7\] outside 0..4"): MOSXAVFrames(root, "train").read(0)

def test_colour_frame_is_refused(tmp_path):
    root = mosxav(tmp_path)
    frame = root / "trainval" / "JPEGImages" / "v00" / "00001.jpg"
    rgb = np.zeros((32, 32, 3), np.uint8); rgb[..., 0] = 200
    Image.fromarray(rgb).save(frame)
    with pytest.raises(DataError, match="00001.jpg: a colour"): MOSXAVFrames(root, "train").read(1, with_label=False)
    Image.fromarray(np.repeat(np.full((32, 32, 1), 90, np.uint8), 3, axis=2)).save(frame)  # grey stored as RGB is accepted
    assert MOSXAVFrames(root, "train").read(1, with_label=False)["image"].shape == (32, 32)

def test_sequences_read_as_volumes(xa_root):
    from diffseg_edu.frames import SequenceVolumes
    seqs = SequenceVolumes(MOSXAVFrames(xa_root, "train"))
    v = seqs.read(1)
    assert len(seqs) == 3 and v["name"] == "v01" and v["image"].shape == v["label"].shape == (10, 64, 64)
    assert (v["label"][1] == IGNORE_INDEX).all() and (v["label"][5] != IGNORE_INDEX).all()   # frames 0 and 5 are annotated

def test_noise_study_on_frames(xa_root):
    from diffseg_edu.noise import NoiseStudyConfig, noise_study, paired_difference, study_table
    cfg = NoiseStudyConfig(dataset="xa-synthetic", root=str(xa_root), levels=(0.3,), seeds=(0, 1), steps=2, img_size=32, n_eval=4, workers=1)
    res = noise_study(cfg, progress=False)
    assert cfg.n_classes == 5 and len(res["runs"]) == 4 and res["n_train_slices"] == 6 and res["n_eval_slices"] == 2
    m, sd, se2, n = paired_difference(res, 0.3)
    assert n == 2 and np.isfinite(m) and se2 >= 0 and "detectable (95 % CI half-width)" in study_table(res)


def test_more_test_sequences_change_no_training_frame(tmp_path):
    "The test sequences are drawn last: `n_test` leaves every training and validation frame as it was."
    a = write_xa_synthetic(tmp_path / "a", n_train=2, n_val=1, n_test=1, n_frames=4, size=48)
    b = write_xa_synthetic(tmp_path / "b", n_train=2, n_val=1, n_test=2, n_frames=4, size=48)
    for split in ("train", "val", "test"):
        fa, fb = MOSXAVFrames(a, split), MOSXAVFrames(b, split)
        assert all(np.array_equal(fa.read(i, False)["image"], fb.read(i, False)["image"]) for i in range(len(fa)))
    assert len(MOSXAVFrames(b, "test")) == 2 * len(MOSXAVFrames(a, "test"))
