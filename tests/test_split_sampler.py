"Labelled/unlabelled split by patient, the two-stream sampler, and the phantom's determinism."
import h5py, numpy as np, pytest
from diffseg_edu.data import DataError, H5Slices, H5Volumes, TwoStreamBatchSampler, patients_to_slices, split_by_group, patient_of, train_loader
from diffseg_edu.phantoms import write_synthetic

def test_acdc_counts(acdc_root):
    names = H5Slices(acdc_root).names
    assert [patients_to_slices(names, n) for n in (1, 3, 7, 14, 21, 28, 35, 70)] == [32, 68, 136, 256, 396, 512, 664, 1312]
    assert names[0].startswith("patient099")
    assert len(H5Volumes(acdc_root, "val")) == 20

def test_split_by_group_general():
    names = [f"p{g}_s{k}" for g in (3, 1, 2) for k in range(g)]
    lab, unl = split_by_group(names, 2)
    assert [names[i] for i in lab] == ["p3_s0", "p3_s1", "p3_s2", "p1_s0"]
    assert sorted(lab + unl) == list(range(len(names))) and not set(lab) & set(unl)
    lab_seeded, _ = split_by_group(names, 1, seed=0)
    assert len({patient_of(names[i]) for i in lab_seeded}) == 1
    with pytest.raises(DataError, match="4 labelled groups requested, but the list has 3"):
        split_by_group(names, 4)

def test_non_contiguous_patients_are_refused():
    with pytest.raises(DataError, match="not the first rows"):
        patients_to_slices(["patient001_a", "patient002_a", "patient001_b"], 1)

def test_synthetic_split_is_by_patient(synthetic_root):
    names = H5Slices(synthetic_root).names
    n1 = patients_to_slices(names, 1)
    assert {patient_of(n) for n in names[:n1]} == {"patient001"}
    assert "patient001" not in {patient_of(n) for n in names[n1:]}

def test_sampler_batches():
    s = TwoStreamBatchSampler(range(10), range(10, 30), batch_size=5, labeled_bs=2, seed=3)
    assert len(s) == 5
    epoch = list(s)
    assert all(len(b) == 5 and max(b[:2]) < 10 <= min(b[2:]) for b in epoch)
    assert sorted(i for b in epoch for i in b[:2]) == list(range(10))           # one pass over the labelled set
    unl = [i for b in epoch for i in b[2:]]
    assert sorted(unl[:15]) == sorted(set(unl[:15]))                           # a permutation, no repeats within it
    assert list(s) != epoch                                                    # the next epoch is reshuffled

def test_sampler_is_a_function_of_seed_and_iteration():
    a = TwoStreamBatchSampler(range(9), range(9, 40), 6, 3, seed=1)
    run = [b for _ in range(4) for b in a]                                     # 4 epochs of 3 batches
    b = TwoStreamBatchSampler(range(9), range(9, 40), 6, 3, seed=1)
    b.set_iteration(7)
    assert [x for x in b] == run[7:9] and next(iter(b)) == run[9]
    c = TwoStreamBatchSampler(range(9), range(9, 40), 6, 3, seed=2)
    assert list(c) != run[:3]

def test_fully_supervised_and_bad_arguments():
    s = TwoStreamBatchSampler(range(7), [], batch_size=3, labeled_bs=3)
    assert len(s) == 2 and all(len(b) == 3 for b in s)
    with pytest.raises(ValueError, match="no unlabelled samples"):
        TwoStreamBatchSampler(range(7), [], batch_size=4, labeled_bs=3)
    with pytest.raises(ValueError, match="cannot fill labeled_bs"):
        TwoStreamBatchSampler(range(2), range(2, 9), batch_size=4, labeled_bs=3)
    with pytest.raises(ValueError, match="must be in 1..batch_size"):
        TwoStreamBatchSampler(range(9), range(9, 20), batch_size=4, labeled_bs=5)

def test_loader_batch(synthetic_root):
    cases = H5Slices(synthetic_root)
    lab, unl = split_by_group(cases.names, 1)
    batch = next(iter(train_loader(cases, lab, unl, batch_size=4, labeled_bs=2, patch_size=(64, 64), seed=0)))
    assert batch["image"].shape == (4, 1, 64, 64) and batch["label"].shape == (4, 64, 64)
    assert batch["labeled"].tolist() == [True, True, False, False]
    assert (batch["label"][2:] == 255).all() and batch["label"][:2].max() <= 3

def test_phantom_is_deterministic(tmp_path):
    a = write_synthetic(tmp_path / "a", 2, 1, 1, seed=5)
    b = write_synthetic(tmp_path / "b", 2, 1, 1, seed=5)
    c = write_synthetic(tmp_path / "c", 2, 1, 1, seed=6)
    assert (a / "train_slices.list").read_text() == (b / "train_slices.list").read_text()
    name = (a / "val.list").read_text().split()[0]
    read = lambda root: h5py.File(root / "data" / f"{name}.h5", "r")["image"][()]
    assert np.array_equal(read(a), read(b)) and not np.array_equal(read(a), read(c))
    vol = H5Volumes(a, "val")[0]
    assert vol["image"].min() == 0 and vol["image"].max() == 1 and set(np.unique(vol["label"])) <= {0, 1, 2, 3}
    assert set(np.unique(vol["label"])) >= {0, 1, 2, 3}, "every class appears in a volume"

def test_phantom_regenerates_after_interruption(tmp_path):
    root = write_synthetic(tmp_path / "s", 1, 1, 1)
    (root / ".diffseg-complete").unlink(); (root / "val.list").unlink()     # as if killed before the marker
    write_synthetic(root, 1, 1, 1)
    assert (root / "val.list").is_file() and (root / ".diffseg-complete").is_file()
