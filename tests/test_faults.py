"""Faults a real cluster sends (issue: signals, options, lists, leaks, overwrites, duplicates, causes named). Every
refusal: exit status 2, no traceback, a last stderr line naming the file or value. The frame/mask readers' faults
(extensions, PNG modes) are in test_frame_faults.py."""
import json, os, shutil, signal, subprocess, sys, textwrap
from pathlib import Path

import pytest, torch

from diffseg_edu.cli import bench_main, data_main, eval_main, train_main
from diffseg_edu.config import ConfigError, TrainConfig
from diffseg_edu.checkpoints import read_checkpoint, save_checkpoint
from diffseg_edu.frames import write_endoscapes_sample
from diffseg_edu.unet import UNet
from diffseg_edu.core import cpu_kind

from cli_checks import ENV, one_line_error, smoke

def parse_error(main, argv, capsys, *names):
    "An option refused at parse time: argparse's exit 2 and its one `error:` line, before any work."
    with pytest.raises(SystemExit) as e: main(argv)
    assert e.value.code == 2
    return one_line_error(capsys.readouterr().err, *names)

# 3. SIGTERM / SIGHUP: handled like Ctrl-C, in a real child process
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    import diffseg_edu.checkpoints as ck, diffseg_edu.train as tr
    at, where, sig = int(os.environ["SIG_AT"]), os.environ["SIG_WHERE"], getattr(signal, os.environ["SIG_NAME"])
    if where == "write":                     # the signal arrives in the middle of the at-th checkpoint write
        real, n = ck._save_synced, [0]
        def interrupted(payload, tmp):
            n[0] += 1
            if n[0] == at:
                with open(tmp, "wb") as f: f.write(b"half a checkpoint")
                os.kill(os.getpid(), sig); time.sleep(10)
            real(payload, tmp)
        ck._save_synced = interrupted
    elif where == "torch.save":              # ... inside torch.save's C++ writer, which wraps what a write raises
        import torch
        real, n = torch.save, [0]
        def interrupted(obj, f, **kw):
            n[0] += 1
            class Proxy:
                writes = 0
                def write(self, b):
                    Proxy.writes += 1
                    if n[0] == at and Proxy.writes == 2: os.kill(os.getpid(), sig); time.sleep(10)
                    return f.write(b)
                def flush(self): f.flush()
            real(obj, Proxy(), **kw)
        torch.save = interrupted
    else:                                    # the signal arrives while iteration `at` trains
        real = tr.set_learning_rates
        def interrupted(r):
            if r.it == at: os.kill(os.getpid(), sig); time.sleep(10)
            return real(r)
        tr.set_learning_rates = interrupted
    from diffseg_edu.cli import train_main
    sys.exit(train_main(sys.argv[1:]))
""")

@pytest.mark.parametrize("where, at, name, code", [("write", 3, "SIGTERM", 143), ("torch.save", 3, "SIGTERM", 143),
                                                   ("train", 3, "SIGHUP", 129)])
def test_signal_ends_a_run_cleanly_and_resume_is_exact(synthetic_root, tmp_path, where, at, name, code):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert train_main(smoke(synthetic_root, straight)) == 0
    env = {**ENV, "SIG_AT": str(at), "SIG_WHERE": where, "SIG_NAME": name}
    r = subprocess.run([sys.executable, "-c", CHILD, *smoke(synthetic_root, stopped)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == code, r.stderr
    one_line_error(r.stderr, f"ended by {name}", stopped / "last.pt", "--resume")
    assert not list(stopped.glob("*.tmp")) and not (stopped / ".lock.holder").exists()
    kept = read_checkpoint(stopped / "last.pt")                            # intact: the last complete write
    assert 0 < kept["iteration"] < 6
    assert train_main(smoke(synthetic_root, stopped, "--resume")) == 0
    a, b = read_checkpoint(straight / "last.pt"), read_checkpoint(stopped / "last.pt")
    assert a["iteration"] == b["iteration"] == 6
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert (straight / "log.csv").read_text() == (stopped / "log.csv").read_text()

# 4. every numeric option checked at parse time
@pytest.mark.parametrize("main, argv, names", [
    (bench_main, ["acdc", "--seeds", "999999999999999999999"], ["--seeds", "not a seed"]),
    (bench_main, ["noise", "--lr", "nan"], ["--lr", "not a finite number"]),
    (bench_main, ["speed", "--warmup", "-1"], ["--warmup", "at least 0"]),
    (bench_main, ["notebooks", "--limit", "-1"], ["--limit", "must be > 0"]),
    (bench_main, ["noise", "--levels", "1.5"], ["--levels", "≤ 1"]),
    (data_main, ["synthetic", "--dest", "x", "--seed", "-3"], ["--seed", "at least 0"]),
    (train_main, ["--preset", "smoke", "--out", "x", "--lr", "0"], ["--lr", "must be > 0"]),
    (eval_main, ["--ckpt", "x.pt", "--img-size", "0"], ["--img-size", "at least 1"]),
])
def test_numeric_options_are_checked_before_any_work(capsys, main, argv, names):
    parse_error(main, argv, capsys, *names)

def test_a_file_that_is_not_a_notebook(tmp_path, capsys):
    bad = tmp_path / "notes.ipynb"; bad.write_text("this is not JSON")
    assert bench_main(["notebooks", str(bad), "--out", str(tmp_path / "out")]) == 2
    one_line_error(capsys.readouterr().err, bad, "not a Jupyter notebook")
    assert not (tmp_path / "out").exists()

# 5. list files as editors write them; split names are plain names
def test_lists_with_a_bom_and_comments_and_split_paths(synthetic_root, tmp_path, capsys):
    root = tmp_path / "root"; shutil.copytree(synthetic_root, root)
    names = (root / "val.list").read_text().split()
    (root / "val.list").write_text("\ufeff# validation patients\n" + "\n".join(names) + "\n", encoding="utf-8")
    assert data_main(["info", "--dataset", "synthetic", "--root", str(root)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"]["val"]["volumes"] == len(names), info["splits"]["val"]
    ckpt = save_checkpoint(tmp_path / "m.pt", UNet(1, 4))
    assert eval_main(["--ckpt", str(ckpt), "--dataset", "synthetic", "--root", str(root), "--split", "../other/val"]) == 2
    one_line_error(capsys.readouterr().err, "'../other/val'", "not a plain name")

# 6. a patient in two splits of an ACDC-layout root
def test_a_training_patient_in_val_is_refused(synthetic_root, tmp_path, capsys):
    root = tmp_path / "root"; shutil.copytree(synthetic_root, root)
    patient = (root / "train_slices.list").read_text().split()[0].split("_slice")[0]
    (root / "val.list").write_text((root / "val.list").read_text() + patient + "\n")
    assert train_main(smoke(root, tmp_path / "run")) == 2
    one_line_error(capsys.readouterr().err, root / "val.list", patient.split("_")[0], "one split")
    assert not (tmp_path / "run" / "config.json").exists()

# 7. runs and results are not overwritten
def test_a_finished_run_without_last_pt_is_not_overwritten(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(smoke(synthetic_root, out)) == 0
    (out / "last.pt").unlink()                                             # deleted to save space
    before = (out / "best.pt").read_bytes()
    assert train_main(smoke(synthetic_root, out, "--seed", "5")) == 2
    one_line_error(capsys.readouterr().err, out, "a finished run")
    assert (out / "best.pt").read_bytes() == before
    assert train_main(smoke(synthetic_root, out)) == 2                      # the same config: still a finished run
    one_line_error(capsys.readouterr().err, out, "nothing to resume")

def test_eval_out_is_not_replaced_without_overwrite(synthetic_root, tmp_path, capsys):
    ckpt, out = save_checkpoint(tmp_path / "m.pt", UNet(1, 4), img_size=32), tmp_path / "eval.json"
    out.write_text("{\"earlier\": true}")
    args = ["--ckpt", str(ckpt), "--dataset", "synthetic", "--root", str(synthetic_root), "--out", str(out)]
    assert eval_main(args) == 2
    one_line_error(capsys.readouterr().err, out, "--overwrite")
    assert json.loads(out.read_text()) == {"earlier": True}
    assert eval_main([*args, "--overwrite"]) == 0 and "mean" in json.loads(out.read_text())

def test_speed_table_that_would_lose_methods(tmp_path, capsys):
    out = tmp_path / "speed"; out.mkdir()
    table = out / f"speed_cpu-{cpu_kind()}_64.json"
    table.write_text(json.dumps({"rows": [{"method": "floor"}, {"method": "diffrect"}]}))
    assert bench_main(["speed", "--img-size", "64", "--methods", "supervised", "--out", str(out)]) == 2
    one_line_error(capsys.readouterr().err, table, "['diffrect']", "--overwrite")

def test_acdc_table_covers_earlier_runs_of_the_same_settings(synthetic_root, tmp_path, capsys):
    out = tmp_path / "bench"
    base = ["acdc", "--dataset", "synthetic", "--root", str(synthetic_root), "--preset", "smoke", "--labeled-patients", "2",
            "--methods", "supervised", "--out", str(out)]
    assert bench_main([*base, "--seeds", "0"]) == 0
    assert bench_main([*base, "--seeds", "1"]) == 0
    printed = capsys.readouterr().out
    assert "1 of this command and 1 finished earlier" in printed
    res = json.loads((out / "synthetic_p2_smoke.json").read_text())
    assert sorted(r["seed"] for r in res["records"]) == [0, 1] and res["settings"]["seeds"] == [0, 1]
    assert "| supervised | val | 2 |" in (out / "synthetic_p2_smoke.md").read_text()

# 8. duplicates are not independent samples
@pytest.mark.parametrize("argv, value", [(["acdc", "--seeds", "0", "0"], "0"), (["demo", "--seeds", "1", "2", "1"], "1"),
                                         (["noise", "--levels", "0.1", "0.1"], "0.1"),
                                         (["speed", "--methods", "supervised", "supervised"], "supervised"),
                                         (["acdc", "--methods", "fixmatch", "fixmatch"], "fixmatch")])
def test_repeated_values_are_refused(capsys, argv, value):
    parse_error(bench_main, argv, capsys, argv[1], value, "more than once")

# 9. errors that name the cause
def test_a_one_channel_model_on_rgb_frames(tmp_path, capsys):
    root = write_endoscapes_sample(tmp_path / "endo")
    ckpt = save_checkpoint(tmp_path / "grey.pt", UNet(1, 7), img_size=32)
    assert eval_main(["--ckpt", str(ckpt), "--dataset", "endoscapes", "--root", str(root), "--split", "val"]) == 2
    one_line_error(capsys.readouterr().err, ckpt, "1-channel", "3 channel")

def test_resume_names_the_settings_that_differ(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(smoke(synthetic_root, out, "--iters", "4")) == 0
    assert train_main(smoke(synthetic_root, out, "--iters", "8", "--seed", "5", "--resume")) == 2
    one_line_error(capsys.readouterr().err, "iters: saved 4, now 8", "seed: saved 0, now 5")

@pytest.mark.parametrize("kind", ["file", "dangling"])
def test_bench_out_that_cannot_be_a_folder(tmp_path, capsys, kind):
    out = tmp_path / "out"
    if kind == "file": out.write_text("x")
    else: out.symlink_to(tmp_path / "nowhere")
    assert bench_main(["speed", "--img-size", "32", "--methods", "supervised", "--out", str(out)]) == 2
    one_line_error(capsys.readouterr().err, out, "is a file" if kind == "file" else "a link to nothing")

def test_a_failed_benchmark_leaves_no_empty_run_folder(synthetic_root, tmp_path, capsys):
    root = tmp_path / "root"; shutil.copytree(synthetic_root, root)
    (root / "val.list").unlink()
    out = tmp_path / "bench"
    assert bench_main(["acdc", "--dataset", "synthetic", "--root", str(root), "--preset", "smoke", "--labeled-patients", "2",
                       "--methods", "supervised", "--seeds", "0", "--out", str(out)]) == 2
    one_line_error(capsys.readouterr().err, root / "val.list")
    assert not (out / "runs" / "supervised_p2_s0").exists()

def test_unknown_settings_are_the_projects_error():
    with pytest.raises(ConfigError, match="unknown setting"): TrainConfig(nosuch=1)
    with pytest.raises(ConfigError, match="did you mean iters"): TrainConfig(iter=3)

def test_sigterm_ends_a_notebook_benchmark_not_just_its_notebook(tmp_path):
    "nbclient's own SIGTERM handler would end one notebook and start the next; the command must end."
    import nbformat, time
    for name in ("slow.ipynb", "slow2.ipynb"):
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time; time.sleep(60)")]), tmp_path / name)
    proc = subprocess.Popen(["diffseg-bench", "notebooks", str(tmp_path / "slow.ipynb"), str(tmp_path / "slow2.ipynb"),
                             "--out", str(tmp_path / "out")], stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(8)                                                       # the kernel is up and running the first cell
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert time.time() - t0 < 30                                       # the second notebook never started
    assert err.strip().splitlines()[-1] == "diffseg-bench: ended by SIGTERM"
    assert not (tmp_path / "out" / "notebooks.json").exists()
