"The MOSXAV reader on small trees generated in the published layout."
import numpy as np, pytest
from PIL import Image
from diffseg_edu.data import DataError, IGNORE_INDEX, split_by_group
from diffseg_edu.frames import MOSXAVFrames, sequence_of, write_mosxav_sample
from diffseg_edu.datasets import dataset_info

@pytest.fixture
def tree(tmp_path):
    return write_mosxav_sample(tmp_path / "MOSXAV_Dataset", n_train=3, n_val=1, n_test=1, n_frames=10, size=32)

def test_frames_and_annotations(tree):
    train = MOSXAVFrames(tree, "train")
    assert len(train) == 30 and sum(train.has_label) == 6                      # every 5th frame annotated
    item = train[0]
    assert item["image"].shape == (32, 32) and item["image"].dtype == np.float32 and 0 <= item["image"].min() <= item["image"].max() <= 1
    assert set(np.unique(item["label"])) == {0, 1, 2}
    assert "label" not in train[1]                                             # an unannotated frame
    with pytest.raises(DataError, match="has no annotation"):
        train.read(1, with_label=True)

def test_split_by_sequence(tree):
    train = MOSXAVFrames(tree, "train")
    lab, unl = split_by_group(train.names, 1, group_of=sequence_of, has_label=train.has_label)
    assert [train.names[i] for i in lab] == ["v00/00000", "v00/00005"]
    assert len(unl) == 28 and {sequence_of(train.names[i]) for i in unl} == {"v00", "v01", "v02"}

def test_others_become_ignore_in_test(tree):
    test = MOSXAVFrames(tree, "test")
    assert all(test.has_label)
    assert (test[0]["label"][:4, :4] == IGNORE_INDEX).all()

def test_rgb_masks_read_like_palette_masks(tmp_path):
    a = MOSXAVFrames(write_mosxav_sample(tmp_path / "p", size=32), "train")
    b = MOSXAVFrames(write_mosxav_sample(tmp_path / "r", size=32, rgb_masks=True), "train")
    assert np.array_equal(a[0]["label"], b[0]["label"])

def test_bad_masks_and_lists(tree):
    mask = tree / "trainval" / "Annotations_Semantic" / "v00" / "00000.png"
    Image.fromarray(np.full((32, 32, 3), (1, 2, 3), np.uint8)).save(mask)
    with pytest.raises(DataError, match=r"colours \[\(1, 2, 3\)\] are not MOSXAV classes") as e:
        MOSXAVFrames(tree, "train")[0]
    assert str(mask) in str(e.value)
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(mask)
    with pytest.raises(DataError, match="outside 0..4"):
        MOSXAVFrames(tree, "train")[0]
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(mask)
    with pytest.raises(DataError, match="does not match image shape"):
        MOSXAVFrames(tree, "train")[0]
    with pytest.raises(DataError, match="no such MOSXAV split list"):
        MOSXAVFrames(tree / "nowhere", "train")
    (tree / "trainval" / "ImageSets" / "val.txt").write_text("v99\n")
    with pytest.raises(DataError, match="sequence 'v99' has no frames"):
        MOSXAVFrames(tree, "val")

def test_info(tree):
    info = dataset_info("mosxav", tree, labeled_patients=2)
    assert info["splits"]["train"] == {"frames": 30, "annotated": 6, "sequences": 3}
    assert info["splits"]["test"]["annotated"] == 10
    assert (info["labeled_frames"], info["unlabeled_frames"]) == (4, 26)

@pytest.mark.parametrize("method", ["supervised", "fixmatch", "diffrect", "diffrect_proto"])
def test_every_method_trains_on_mosxav(tree, tmp_path, method):
    "`--dataset mosxav` on a tree in the published layout: 5 classes, 'Others' in the test masks ignored, averaged per sequence."
    from diffseg_edu.config import make_config
    from diffseg_edu.train import train
    cfg = make_config("smoke", method=method, dataset="mosxav", root=str(tree), labeled_patients=2, img_size=32)
    summary = train(cfg, tmp_path / method, progress=False)
    test = summary["metrics"]["test"]
    assert summary["iteration"] == 6 and set(test["per_class"]["dice"]) == {"vessel", "contrast catheter", "catheter", "balloon"}
    assert test["averaged"].startswith("over sequences") and len(test["per_case"]) == 10
