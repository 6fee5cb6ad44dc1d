"Bad input gets a DataError that names the file and the problem; nothing is silently dropped."
import h5py, numpy as np, pytest
from diffseg_edu.data import DataError, H5Slices, H5Volumes, read_h5, read_list, SemiSupervisedSlices

def write(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items(): f[k] = v
    return path

def slice_root(tmp_path, **arrays):
    "An SSL4MIS root with one slice `case_slice_0` holding `arrays`."
    (tmp_path / "train_slices.list").write_text("case_slice_0\n")
    return write(tmp_path / "data" / "slices" / "case_slice_0.h5", **arrays)

IMG, LAB = np.random.rand(16, 16).astype(np.float32), np.random.randint(0, 4, (16, 16)).astype(np.uint8)

@pytest.mark.parametrize("arrays, message", [
    (dict(image=IMG), "no 'label' dataset"),
    (dict(label=LAB), "no 'image' dataset"),
    (dict(image=IMG[None], label=LAB[None]), "expected a 2-D array"),
    (dict(image=np.where(IMG > 0.5, np.inf, IMG).astype(np.float32), label=LAB), "non-finite"),
    (dict(image=np.where(IMG > 0.5, np.nan, IMG).astype(np.float32), label=LAB), "non-finite"),
    (dict(image=IMG, label=(LAB + 2).astype(np.uint8)), "outside 0..3"),
    (dict(image=IMG, label=np.where(LAB == 1, 255, LAB).astype(np.uint8)), r"\[255\] outside 0..3"),   # no ignore value in h5 labels
    (dict(image=IMG, label=LAB[:8]), "does not match image shape"),
    (dict(image=IMG, label=LAB + 0.5), "non-integer"),
])
def test_bad_slice_file(tmp_path, arrays, message):
    path = slice_root(tmp_path, **arrays)
    ds = H5Slices(tmp_path)
    with pytest.raises(DataError, match=message) as e:
        ds[0]
    assert str(path) in str(e.value)

def test_truncated_file(tmp_path):
    path = slice_root(tmp_path, image=IMG, label=LAB)
    data = path.read_bytes(); path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        H5Slices(tmp_path)[0]
    assert str(path) in str(e.value)

def test_not_hdf5(tmp_path):
    path = slice_root(tmp_path, image=IMG, label=LAB); path.write_text("not an h5 file")
    with pytest.raises(DataError, match="cannot be read as HDF5"):
        read_h5(path)

def test_list_entry_without_file(tmp_path):
    slice_root(tmp_path, image=IMG, label=LAB)
    (tmp_path / "train_slices.list").write_text("case_slice_0\nmissing_slice_3\n")
    with pytest.raises(DataError, match="1 entries have no file") as e:
        H5Slices(tmp_path)
    assert "missing_slice_3.h5" in str(e.value) and "train_slices.list" in str(e.value)

def test_empty_and_missing_lists(tmp_path):
    (tmp_path / "train_slices.list").write_text("\n  \n")
    with pytest.raises(DataError, match="the list is empty"):
        H5Slices(tmp_path)
    with pytest.raises(DataError, match=r"no such split list .*train_slices"):
        H5Volumes(tmp_path, "test")
    (tmp_path / "val.list").write_text("a\na\n")
    with pytest.raises(DataError, match="appears twice"):
        read_list(tmp_path, "val")

def test_volume_ndim(tmp_path):
    (tmp_path / "val.list").write_text("vol\n")
    write(tmp_path / "data" / "vol.h5", image=IMG, label=LAB)
    with pytest.raises(DataError, match="expected a 3-D array"):
        H5Volumes(tmp_path, "val")[0]

def test_unlabelled_rows_never_read_the_label(tmp_path):
    "An unlabelled slice whose label is broken still loads: its label is never read, and comes back as IGNORE_INDEX."
    slice_root(tmp_path, image=IMG)   # no label at all
    item = SemiSupervisedSlices(H5Slices(tmp_path), labeled_idx=[], patch_size=(8, 8))[0]
    assert not item["labeled"] and (item["label"] == 255).all()
    with pytest.raises(DataError, match="no 'label'"):
        SemiSupervisedSlices(H5Slices(tmp_path), labeled_idx=[0], patch_size=(8, 8))[0]

def test_no_file_handles_leak(synthetic_root):
    ds = H5Slices(synthetic_root)
    for i in range(len(ds)): ds[i]; ds.shape(i)
    assert len(h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)) == 0

def test_image_max_above_one_is_normalised(tmp_path):
    "The official loader's guard: an image with max > 1 is min-max scaled (never fires for ACDC)."
    path = slice_root(tmp_path, image=IMG * 300, label=LAB)
    img = read_h5(path)["image"]
    assert img.min() == 0 and abs(img.max() - 1) < 1e-6
