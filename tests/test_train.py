"Training engine: every method runs, exact resume after a kill, atomic checkpoints, non-finite losses, bad configs fail fast, the CLI."
import json, math, os, subprocess, sys, time
from dataclasses import replace

import pytest
import torch

import diffseg_edu.train as tr
import diffseg_edu.checkpoints as checkpoints
import diffseg_edu.config as config
from diffseg_edu.unet import UNet
from diffseg_edu.data import DataError
from diffseg_edu.cli import eval_main as eval_main
from diffseg_edu.config import METHODS, make_config
from diffseg_edu.train import ConfigError, check_config, learning_rates, train
from diffseg_edu.cli import train_main as main
from diffseg_edu.checkpoints import read_checkpoint


def _cfg(root, **kw):
    return make_config("smoke", root=str(root), **kw)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_runs_smoke(synthetic_root, tmp_path, method):
    summary = train(_cfg(synthetic_root, method=method), tmp_path / method, progress=False)
    assert summary["iteration"] == 6 and 0 <= summary["best"]["dice"] <= 1
    rows = (tmp_path / method / "log.csv").read_text().splitlines()[1:]
    assert rows and all(math.isfinite(float(r.split(",")[2])) for r in rows)
    names = {p.name for p in (tmp_path / method).iterdir()}
    assert {"config.json", "log.csv", "last.pt", "best.pt", "metrics.json", "curves.png"} <= names
    ck = read_checkpoint(tmp_path / method / "last.pt")
    assert ck["iteration"] == 6 and ("refine" in ck) == method.startswith("diffrect") and ("hook" in ck) == (method == "diffrect_proto")
    if method == "diffrect_proto": assert ck["hook"]["memory.seen"].any()
    assert json.loads((tmp_path / method / "config.json").read_text())["method"] == method


def test_log_heldout_records_without_changing_the_run(synthetic_root, tmp_path):
    "`log_heldout` adds the held-out and all-case Dice at each validation point; the weights and every other row stay."
    for name, extra in (("plain", {}), ("logged", {"log_heldout": True})):
        train(_cfg(synthetic_root, method="fixmatch", **extra), tmp_path / name, progress=False)
    rows = lambda name: [r.split(",") for r in (tmp_path / name / "log.csv").read_text().splitlines()[1:]]
    added = [r for r in rows("logged") if r[1] in ("val_heldout_dice", "val_all_dice")]
    assert added and len(added) == 2 * sum(r[1] == "val_dice" for r in rows("logged"))
    assert [r for r in rows("logged") if r not in added] == rows("plain")
    a, b = (read_checkpoint(tmp_path / name / "last.pt")["state_dict"] for name in ("plain", "logged"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "val_heldout" in json.loads((tmp_path / "logged" / "metrics.json").read_text())


def _cli(root, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [sys.executable, "-c", "import torch; torch.set_num_threads(1); from diffseg_edu.cli import train_main; raise SystemExit(train_main())",
            "--preset", "smoke", "--method", "diffrect", "--root", str(root), "--iters", "12", "--ckpt-every", "2", "--val-every", "4",
            "--out", str(out), "--quiet", *extra], env


def test_resume_after_kill_is_exact(synthetic_root, tmp_path):
    cmd, env = _cli(synthetic_root, tmp_path / "straight")
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    cmd, env = _cli(synthetic_root, tmp_path / "killed")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last, t0 = tmp_path / "killed" / "last.pt", time.time()
    while time.time() - t0 < 120:                      # kill once a checkpoint past iteration 4 exists, mid-run
        if last.exists():
            try:
                if read_checkpoint(last)["iteration"] >= 4: break
            except Exception: pass
        if proc.poll() is not None: break
        time.sleep(0.05)
    proc.kill(); proc.wait()
    killed_at = read_checkpoint(last)["iteration"]
    assert 4 <= killed_at < 12, killed_at
    cmd, env = _cli(synthetic_root, tmp_path / "killed", "--resume")
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    a, b = read_checkpoint(tmp_path / "straight" / "last.pt"), read_checkpoint(last)
    assert a["iteration"] == b["iteration"] == 12
    for part in ("state_dict", "refine"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    log = lambda d: [r for r in (tmp_path / d / "log.csv").read_text().splitlines()]
    assert log("straight") == log("killed")            # the loss curve continues where it stopped


def test_interrupted_checkpoint_write_keeps_the_previous(synthetic_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(_cfg(synthetic_root, iters=2), out, progress=False)
    before = read_checkpoint(out / "last.pt")
    real_save = torch.save
    def crash(obj, f, *a, **k):
        f.write(b"partial bytes"); raise OSError("disk full (simulated)")
    monkeypatch.setattr(checkpoints.torch, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        checkpoints.save_checkpoint(out / "last.pt", UNet(), iteration=99)
    monkeypatch.setattr(checkpoints.torch, "save", real_save)
    after = read_checkpoint(out / "last.pt")
    assert after["iteration"] == before["iteration"] == 2
    assert all(torch.equal(after["state_dict"][k], before["state_dict"][k]) for k in before["state_dict"])


def test_non_finite_loss_stops_with_last_good_checkpoint(synthetic_root, tmp_path, monkeypatch):
    real = tr.train_step
    def step(cfg, models, batch, it, device):
        out = real(cfg, models, batch, it, device)
        return {**out, "loss": float("nan")} if it == 4 else out
    monkeypatch.setattr(tr, "train_step", step)
    with pytest.raises(FloatingPointError, match="iteration 4: non-finite loss"):
        train(_cfg(synthetic_root), tmp_path / "nan", progress=False)
    assert read_checkpoint(tmp_path / "nan" / "last.pt")["iteration"] == 4


def test_bad_configs_fail_before_training(synthetic_root, tmp_path, capsys):
    out = tmp_path / "bad"
    cases = [(["--labeled-patients", "50"], "50 labelled groups requested, but the list has"),
             (["--img-size", "40"], "img_size=40"),
             (["--labeled-bs", "6", "--method", "fixmatch"], "needs unlabelled rows")]
    for extra, msg in cases:
        assert main(["--preset", "smoke", "--root", str(synthetic_root), "--out", str(out), *extra]) == 2
        assert msg in capsys.readouterr().err
        assert not (out / "last.pt").exists()
    with pytest.raises(SystemExit):
        main(["--preset", "smoke", "--method", "meanteacher", "--out", str(out)])
    with pytest.raises(ConfigError, match="method=.meanteacher.: must be one of"):
        check_config(make_config("smoke", method="meanteacher"))
    with pytest.raises(ConfigError, match="needs root"):
        check_config(make_config("paper"))
    with pytest.raises(ConfigError, match="amp='fp16'"):
        check_config(make_config("smoke", amp="fp16"))
    with pytest.raises(ConfigError, match="only apply to the DiffRect methods"):
        check_config(make_config("smoke", method="fixmatch", refine={"widths": (8, 16, 32, 64, 128)}))
    with pytest.raises(ConfigError, match="refine settings .*bogus"):
        check_config(make_config("smoke", method="diffrect", refine={"bogus": 1}))
    with pytest.raises(ConfigError, match="refine settings"):
        check_config(make_config("smoke", method="diffrect", refine={"widths": (8, 16)}))


def test_rectifier_overrides_and_config_compatibility(synthetic_root, tmp_path):
    from dataclasses import asdict
    cfg = _cfg(synthetic_root, method="diffrect", iters=2, refine={"widths": [8, 16, 32, 64, 128], "denoiser_widths": [128, 192, 256]})
    train(cfg, tmp_path / "slim", progress=False)
    ckpt = read_checkpoint(tmp_path / "slim" / "last.pt")
    assert ckpt["refine"]["encoder.in_conv.conv0.0.weight"].shape[0] == 8                   # the slim rectifier was trained and saved
    assert sum(v.numel() for v in ckpt["refine"].values()) < sum(p.numel() for p in tr.RefineNet(n_classes=4).parameters()) / 2
    stored = {k: v for k, v in asdict(cfg).items() if k != "refine"}           # a config saved before the setting existed
    assert config.same_config(stored, make_config(**{**stored}))                    # …describes the default (official) rectifier
    assert not config.same_config(stored, cfg) and not config.same_config({**stored, "gone": 1}, cfg)


def test_resume_guards(synthetic_root, tmp_path):
    with pytest.raises(ConfigError, match="last.pt not found"):
        train(_cfg(synthetic_root), tmp_path / "none", resume=True, progress=False)
    train(_cfg(synthetic_root, iters=2), tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(_cfg(synthetic_root, iters=2), tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="different config"):
        train(_cfg(synthetic_root, iters=4, lr=0.5), tmp_path / "r", resume=True, progress=False)


def test_learning_rates_poly_and_constant_refine():
    cfg = make_config("paper", root="x")
    assert learning_rates(cfg, 0) == (0.01, 0.01)
    assert learning_rates(cfg, 29999)[0] < 1e-4 and learning_rates(cfg, 29999)[1] == 0.01
    assert learning_rates(replace(cfg, refine_poly=True), 15000)[1] == pytest.approx(0.01 * 0.5 ** 0.9)


def test_deterministic_on_cpu(synthetic_root, tmp_path):
    a = train(_cfg(synthetic_root, iters=3, method="fixmatch"), tmp_path / "a", progress=False)
    b = train(_cfg(synthetic_root, iters=3, method="fixmatch"), tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "log.csv").read_text() == (tmp_path / "b" / "log.csv").read_text()


def test_eval_reads_best_checkpoint(synthetic_root, tmp_path):
    train(_cfg(synthetic_root, method="supervised"), tmp_path / "run", progress=False)
    assert eval_main(["--ckpt", str(tmp_path / "run" / "best.pt"), "--dataset", "synthetic", "--root", str(synthetic_root),
                      "--split", "val", "--out", str(tmp_path / "ev.json")]) == 0
    assert json.loads((tmp_path / "ev.json").read_text())["mean"]["dice"] >= 0


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _sync_worker(rank, port, out):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist = tr.Distributed("cpu")
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad = torch.full((3,), float(rank + 1))                 # 1 on rank 0, 2 on rank 1
    if rank == 1: b.grad = torch.full((2,), 4.0)               # rank 0 did not use b
    dist.sync_grads([a, b])
    means = dist.mean({"loss": float(rank)})
    torch.save({"rank": dist.rank, "world": dist.world, "a": a.grad, "b": b.grad, "loss": means["loss"]}, out / f"r{rank}.pt")
    dist.close()


def test_gradients_are_averaged_over_processes(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_sync_worker, args=(_free_port(), tmp_path), nprocs=2, join=True)
    for r in (0, 1):
        got = torch.load(tmp_path / f"r{r}.pt")
        assert (got["rank"], got["world"]) == (r, 2)
        assert torch.equal(got["a"], torch.full((3,), 1.5))       # (1 + 2) / 2
        assert torch.equal(got["b"], torch.full((2,), 2.0))       # a missing gradient counts as zero, as in DDP
        assert got["loss"] == 0.5


def test_two_processes_train_in_sync_and_resume_needs_the_same_count(synthetic_root, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",   # `accelerate launch`
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "diffseg_edu.cli", "train", "--preset", "smoke", "--method", "diffrect_proto", "--root", str(synthetic_root), "--iters", "6",
           "--out", str(out), "--quiet"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "× 2 processes" in res.stdout and res.stdout.count("best validation Dice") == 1     # only process 0 reports
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["iteration"] == 6 and len(ckpt["rng"]) == 2 and (out / "metrics.json").exists()
    assert not torch.equal(ckpt["rng"][0]["cpu"], ckpt["rng"][1]["cpu"])            # each process has its own dropout stream
    with pytest.raises(ConfigError, match="2 process"):
        train(make_config("smoke", root=str(synthetic_root), method="diffrect_proto", iters=6), out, resume=True, progress=False)


def test_augment_overrides_and_the_set_flag(synthetic_root, tmp_path, capsys):
    from diffseg_edu.data import AugmentConfig
    with pytest.raises(ConfigError, match="augment settings"):
        check_config(make_config("smoke", augment={"p_spin": 1}))
    with pytest.raises(ConfigError, match="p_flip=1.5"):
        check_config(make_config("smoke", augment={"p_flip": 1.5}))
    assert config.augment_config(make_config("demo")) == AugmentConfig(p_flip=0.0, p_rotate=0.0)     # the demo's only augmentation change
    assert all(config.augment_config(make_config(p, root="x")) == AugmentConfig() for p in ("smoke", "cpu", "paper"))
    # the switch reaches the batches: with no flips or rotations the labelled rows keep their resized labels
    data = tr.TrainData(_cfg(synthetic_root, augment={"p_flip": 0, "p_rotate": 0}))
    batch, rows = data.batch(0, torch.device("cpu")), [data.slices[i] for i in data.sampler.batch(0)]
    L = batch["labeled_mask"].bool()
    assert torch.equal(batch["label"][L], torch.stack([r["label"] for r in rows])[L])
    # --set reaches any setting, its value read as JSON, and the run's config.json records it
    out = tmp_path / "set"
    assert main(["--preset", "demo", "--root", str(synthetic_root), "--out", str(out), "--quiet", "--iters", "2", "--img-size", "32",
                 "--val-every", "2", "--n-val", "1", "--labeled-patients", "2", "--set", "augment={}", "--set", "refine_poly=true"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["augment"] == {} and saved["refine_poly"] is True and saved["preset"] == "demo"
    assert main(["--preset", "smoke", "--root", str(synthetic_root), "--out", str(tmp_path / "x"), "--set", "bogus=1"]) == 2
    assert "unknown setting(s) ['bogus']" in capsys.readouterr().err
    assert main(["--preset", "smoke", "--root", str(synthetic_root), "--out", str(tmp_path / "x"), "--set", "augment"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
