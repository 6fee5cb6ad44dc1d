"""What goes wrong, said clearly: one run folder per process, typed settings, exit 2 with one line naming the path or value,
a previous checkpoint to fall back on, degenerate data files, MOSXAV lists, and checks made before the work starts."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import h5py, numpy as np, pytest, torch

from diffseg_edu.data import DataError, FolderBusy, folder_lock, read_h5
from diffseg_edu.frames import MOSXAVFrames, write_mosxav_sample
from diffseg_edu.datasets import dataset_info, download
from diffseg_edu.cli import data_main as data_main
from diffseg_edu.cli import eval_main as eval_main
from diffseg_edu.train import ConfigError, TrainConfig, train
from diffseg_edu.cli import train_main as train_main
from diffseg_edu.config import make_config, same_config
from diffseg_edu.checkpoints import read_checkpoint
from diffseg_edu.unet import UNet
from diffseg_edu.checkpoints import save_checkpoint

from cli_checks import ENV, one_line_error, smoke

def hold(folder: Path, what: str) -> subprocess.Popen:
    "A second, real process that holds `folder` until killed; returns once the lock is taken."
    code = f"import time; from diffseg_edu.data import folder_lock\nwith folder_lock({str(folder)!r}, {what!r}):\n print('held', flush=True); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "held"
    return proc

# 1. a folder belongs to one process
def test_second_training_into_a_held_folder_exits_2(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    holder = hold(out, "diffseg-train diffrect")
    try:
        assert train_main(smoke(synthetic_root, out)) == 2
        one_line_error(capsys.readouterr().err, out, "diffseg-train diffrect", f"pid {holder.pid}")
        assert not (out / "config.json").exists()                     # nothing of the second run was written
    finally: holder.kill(); holder.wait()
    assert train_main(smoke(synthetic_root, out)) == 0                  # the lock died with its process: no stale lock

def test_two_real_trainings_and_ctrl_c(synthetic_root, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "diffseg_edu.cli", "train", *smoke(synthetic_root, out, "--iters", "5000", "--val-every", "1000")]
    # a pytest-xdist worker ignores SIGINT, and an ignored signal stays ignored in its children: restore Ctrl-C
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=ENV,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.time()
    while not (out / "last.pt").exists() and time.time() - t0 < 120:
        assert first.poll() is None, first.communicate()[1]
        time.sleep(0.1)
    second = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    assert second.returncode == 2
    one_line_error(second.stderr, out, "in use by diffseg-train supervised", f"pid {first.pid}")
    first.send_signal(signal.SIGINT)                                   # Ctrl-C
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    one_line_error(err, "interrupted", out / "last.pt", "--resume")
    assert not list(out.glob("*.tmp")) and not (out / ".lock.holder").exists()

def test_phantom_generator_into_a_held_folder(tmp_path):
    dest = tmp_path / "phantom"
    holder = hold(dest, "the phantom generator (20/5/5 patients, seed 0)")
    try:
        r = subprocess.run(["diffseg-data", "synthetic", "--dest", str(dest), "--train", "1", "--val", "1", "--test", "1"],
                           capture_output=True, text=True, env=ENV)
        assert r.returncode == 2
        one_line_error(r.stderr, dest, "phantom generator", f"pid {holder.pid}")
        with pytest.raises(FolderBusy, match="in use by the phantom generator"):
            with folder_lock(dest, "this test", wait=0.2): pass
    finally: holder.kill(); holder.wait()

# 2. settings are typed, everywhere
@pytest.mark.parametrize("setting, ok, message", [
    ("refine_poly=False", True, None), ("refine_poly=false", True, None),
    ("refine_poly=nope", False, "refine_poly='nope': must be true or false"),
    ("iters=2.5", False, "iters=2.5: must be an integer"), ("lr=abc", False, "lr='abc': must be a finite number"),
    ("lr=0", False, "lr=0: must be a learning rate > 0"), ("n_val=0", False, "n_val=0: must be at least 1"),
    ("momentum=1.5", False, "momentum=1.5: must be in [0, 1)"), ("method=meanteacher", False, "method='meanteacher'"),
])
def test_set_values_are_typed(synthetic_root, tmp_path, capsys, setting, ok, message):
    out = tmp_path / "run"
    code = train_main(smoke(synthetic_root, out, "--iters", "2", "--set", setting))
    if ok:
        assert code == 0 and json.loads((out / "config.json").read_text())["refine_poly"] is False
    else:
        assert code == 2 and not (out / "config.json").exists()
        one_line_error(capsys.readouterr().err, message)

def test_presets_code_and_saved_configs_are_checked_alike():
    with pytest.raises(ConfigError, match="batch_size=0"): make_config("smoke", batch_size=0)
    with pytest.raises(ConfigError, match="img_size='abc'"): TrainConfig(img_size="abc")
    assert not same_config({"iters": -3}, make_config("smoke"))       # a crafted saved config is not 'the same run'

# 3. the commands' own errors are one line and exit 2
def test_corrupt_last_pt_without_a_previous_one(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(smoke(synthetic_root, out, "--iters", "2")) == 0
    (out / "last.pt").write_bytes(b"not a checkpoint")
    assert not (out / "last.prev.pt").exists()                          # one checkpoint only (iteration 2): nothing to fall back on
    assert train_main(smoke(synthetic_root, out, "--iters", "4", "--resume")) == 2
    one_line_error(capsys.readouterr().err, out / "last.pt", "cannot be read")

@pytest.mark.parametrize("kind", ["file", "device", "cuda"])
def test_bad_out_and_device(synthetic_root, tmp_path, capsys, kind):
    if kind == "cuda" and torch.cuda.is_available(): pytest.skip("this machine has CUDA")
    out, extra, names = tmp_path / "run", [], []
    if kind == "file": out = tmp_path / "a_file"; out.write_text("x"); names = [out, "not a folder"]
    if kind == "device": extra, names = ["--device", "foo"], ["--device 'foo'", "not a device"]
    if kind == "cuda": extra, names = ["--device", "cuda"], ["--device cuda", "no CUDA"]
    assert train_main(smoke(synthetic_root, out, "--iters", "2", *extra)) == 2
    one_line_error(capsys.readouterr().err, *names)
    assert eval_main(["--ckpt", str(tmp_path / "none.pt"), "--device", "foo"]) == 2

def test_failed_checkpoint_write_leaves_no_temp_file(tmp_path, monkeypatch):
    path, model = tmp_path / "last.pt", UNet(n_classes=4)
    save_checkpoint(path, model, iteration=1)
    def full_disk(obj, f, *a, **k):
        f.write(b"x" * 1000); raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 1000 vs 0")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="the checkpoint could not be written") as e:
        save_checkpoint(path, model, keep_previous=True, iteration=2)
    assert e.value.filename == str(path) and not (tmp_path / "last.pt.tmp").exists()
    monkeypatch.undo()
    assert read_checkpoint(path)["iteration"] == 1 and not (tmp_path / "last.prev.pt").exists()

@pytest.fixture
def small_disk(tmp_path):
    "A 3 MiB tmpfs (needs mount rights: root in a container that allows it); skipped cleanly elsewhere."
    mnt = tmp_path / "small"; mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)

def test_full_disk_exits_2_and_cleans_up(synthetic_root, small_disk, capsys):
    out = small_disk / "run"                                           # the U-Net checkpoint (~7 MB) cannot fit in 3 MiB
    assert train_main(smoke(synthetic_root, out, "--iters", "2", "--set", "img_size=32")) == 2
    one_line_error(capsys.readouterr().err, out, "could not be written", "free on its disk")
    assert not list(out.glob("*.tmp")) and not (out / ".lock.holder").exists()

# 4. a corrupt last.pt falls back to the previous good one
def test_both_checkpoints_corrupt(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(smoke(synthetic_root, out, "--iters", "4")) == 0
    for f in ("last.pt", "last.prev.pt"): (out / f).write_bytes(b"junk")
    assert train_main(smoke(synthetic_root, out, "--iters", "6", "--resume")) == 2
    one_line_error(capsys.readouterr().err, "last.prev.pt", "cannot be read")

# 5. degenerate data files
def h5(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            if isinstance(v, str) and v == "group": f.create_group(k)
            else: f[k] = v
    return path

@pytest.mark.parametrize("image, ndim, message", [
    (np.zeros((0, 0), np.float32), 2, "'image' is empty"),
    (np.zeros((0, 16, 16), np.float32), 3, "a volume without slices"),
    ("a string", 2, "expected numbers"),
    ("group", 2, "'image' is an HDF5 group"),
])
def test_degenerate_files_name_the_file(tmp_path, image, ndim, message):
    label = np.zeros(image.shape, np.uint8) if isinstance(image, np.ndarray) else np.zeros((4, 4), np.uint8)
    path = h5(tmp_path / "case.h5", image=image, label=label)
    with pytest.raises(DataError, match=message) as e: read_h5(path, ndim)
    assert str(path) in str(e.value)

def test_info_names_a_3d_slice_among_2d_ones(synthetic_root, tmp_path, capsys):
    root = tmp_path / "root"; shutil.copytree(synthetic_root, root)
    name = (root / "train_slices.list").read_text().split()[3]
    bad = h5(root / "data" / "slices" / f"{name}.h5", image=np.zeros((2, 16, 16), np.float32), label=np.zeros((2, 16, 16), np.uint8))
    assert data_main(["info", "--dataset", "synthetic", "--root", str(root)]) == 2
    one_line_error(capsys.readouterr().err, bad, "expected a 2-D array")

# 6. MOSXAV lists
@pytest.fixture
def mosxav(tmp_path):
    return write_mosxav_sample(tmp_path / "MOSXAV_Dataset", n_train=2, n_val=1, n_test=1, n_frames=5, size=32)

def test_mosxav_sequence_listed_twice(mosxav):
    listing = mosxav / "trainval" / "ImageSets" / "train.txt"
    listing.write_text(listing.read_text() + listing.read_text().split()[0] + "\n")
    with pytest.raises(DataError, match=r"\['v00'\] listed more than once"): MOSXAVFrames(mosxav, "train")

@pytest.mark.parametrize("damage, message", [("empty", "the list is empty"), ("frames", "has no frames")])
def test_info_never_drops_a_listed_split(mosxav, capsys, damage, message):
    listing = mosxav / "trainval" / "ImageSets" / "val.txt"
    if damage == "empty": listing.write_text("\n")
    else: shutil.rmtree(mosxav / "trainval" / "JPEGImages" / listing.read_text().split()[0])
    assert data_main(["info", "--dataset", "mosxav", "--root", str(mosxav)]) == 2
    one_line_error(capsys.readouterr().err, listing, message)

# 7. checks made before the work starts
def test_bad_sha256_is_refused_before_any_download(tmp_path, capsys):
    with pytest.raises(SystemExit) as e: data_main(["download", "mosxav", "--sha256", "1234", "--url", "http://example.invalid/x.zip"])
    assert e.value.code == 2 and "not a SHA-256 digest" in capsys.readouterr().err
    with pytest.raises(DataError, match="nothing was downloaded"): download("mosxav", tmp_path / "d", url="http://example.invalid/x", sha256="zz")

def test_eval_checks_out_and_sizes_before_evaluating(synthetic_root, tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "m.pt", UNet(n_classes=4), img_size=32)
    base = ["--ckpt", str(ckpt), "--dataset", "synthetic", "--root", str(synthetic_root)]
    assert eval_main([*base, "--out", str(tmp_path)]) == 2              # a folder, not a file: refused before any output
    err = capsys.readouterr()
    assert err.out == "" and "is a folder" in one_line_error(err.err, tmp_path)
    assert eval_main([*base, "--img-size", "24"]) == 2                  # 0 is refused by the parser (test_faults)
    one_line_error(capsys.readouterr().err, "--img-size 24", "positive multiple of 16")
    bad = save_checkpoint(tmp_path / "crafted.pt", UNet(n_classes=4), img_size="abc")
    assert eval_main(["--ckpt", str(bad), "--dataset", "synthetic", "--root", str(synthetic_root)]) == 2
    one_line_error(capsys.readouterr().err, "crafted.pt: img_size 'abc'")

def test_crafted_model_fields(synthetic_root, tmp_path, capsys):
    ck = torch.load(save_checkpoint(tmp_path / "m.pt", UNet(n_classes=4)), weights_only=True)
    ck["model"]["kwargs"]["n_classes"] = -1
    torch.save(ck, tmp_path / "crafted.pt")
    assert eval_main(["--ckpt", str(tmp_path / "crafted.pt"), "--dataset", "synthetic", "--root", str(synthetic_root)]) == 2
    one_line_error(capsys.readouterr().err, "n_classes must be at least 2")
