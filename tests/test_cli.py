"The diffseg-data command: info, synthetic, preview, download, and clear errors."
import json, subprocess, sys
import pytest
from diffseg_edu.cli import data_main as main

def run_cli(*args):
    "Run the installed console script."
    return subprocess.run(["diffseg-data", *args], capture_output=True, text=True, timeout=300)

def test_info_acdc(acdc_root):
    r = run_cli("info", "--dataset", "acdc", "--root", str(acdc_root), "--labeled-patients", "3")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["splits"]["train_slices"]["slices"] == 1312 and info["labeled_slices"] == 68
    assert info["unlabeled_slices"] == 1244 and info["splits"]["val"]["volumes"] == 20
    assert info["classes"] == ["background", "RV", "Myo", "LV"]

def test_info_synthetic(synthetic_root, capsys):
    assert main(["info", "--dataset", "synthetic", "--root", str(synthetic_root), "--labeled-patients", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"]["val"]["volumes"] == 4 and info["splits"]["test"]["volumes"] == 2
    assert 0 < info["labeled_slices"] < info["splits"]["train_slices"]["slices"]

def test_synthetic_and_preview(tmp_path):
    r = run_cli("synthetic", "--dest", str(tmp_path / "ph"), "--train", "2", "--val", "1", "--test", "1")
    assert r.returncode == 0, r.stderr and (tmp_path / "ph" / "train_slices.list").is_file()
    r = run_cli("preview", "--dataset", "synthetic", "--root", str(tmp_path / "ph"), "--n", "4", "--out", str(tmp_path / "p.png"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

def test_preview_volumes_and_default_phantom(tmp_path, synthetic_root, data_cache):
    assert main(["preview", "--dataset", "synthetic", "--root", str(synthetic_root), "--split", "val", "--n", "2", "--out", str(tmp_path / "v.png")]) == 0
    assert (tmp_path / "v.png").is_file()

def test_bench_moved_to_diffseg_bench(capsys):
    "Measurement lives in diffseg-bench: diffseg-data has no bench subcommand."
    with pytest.raises(SystemExit):
        main(["bench"])
    assert "invalid choice: 'bench'" in capsys.readouterr().err

@pytest.mark.parametrize("args, message", [
    (["info", "--dataset", "acdc", "--root", "/nonexistent"], "no such split list"),
    (["info", "--dataset", "acdc"], "--dataset acdc needs --root"),
    (["info", "--dataset", "mosxav", "--root", "/nonexistent"], "no mosxav splits found (trainval/ImageSets"),
    (["preview", "--dataset", "synthetic", "--root", "/nonexistent"], "no such split list"),
])
def test_errors(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffseg-data: error:") and message in err

def test_labeled_patients_too_many(synthetic_root, capsys):
    assert main(["info", "--dataset", "synthetic", "--root", str(synthetic_root), "--labeled-patients", "99"]) == 2
    assert "99 labelled groups requested, but the list has 4" in capsys.readouterr().err
