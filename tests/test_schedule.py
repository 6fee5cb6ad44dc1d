"The budget-scaled schedule (issue 14): the official ramp at T = 30,000, the paper preset's values, λ logged by every SSL method; fast mode."
import csv, json

import pytest
import torch

from diffseg_edu.diffusion import diffrect_iteration
from diffseg_edu.losses import consistency_weight
from diffseg_edu.train import ConfigError, TrainData, build_models, check_config, fast_settings, learning_rates, rect_weight, run_schedule, train, unsup_weight
from diffseg_edu.cli import train_main as main
from diffseg_edu.config import make_config, same_config


def test_scaled_ramp_is_the_official_one_at_30000_iterations():
    paper = make_config("paper", root="ACDC")
    assert paper.schedule == "scaled" and paper.iters == 30_000
    for t in range(30_000):          # c = clip(⌊200 t / T⌋, 0, 200) equals t // 150 at every t
        assert unsup_weight(paper, t) == consistency_weight(t) == consistency_weight(t, iters=30_000)
    assert consistency_weight(30_000, iters=30_000) == consistency_weight(40_000) == 0.1


def test_paper_preset_is_the_official_protocol():
    cfg = check_config(make_config("paper", root="ACDC"))
    assert run_schedule(cfg) == {"refine_start": 1000, "val_every": 200}
    assert (cfg.img_size, cfg.batch_size, cfg.labeled_bs, cfg.optimizer, cfg.lr, cfg.refine_lr, cfg.consistency) == (256, 6, 3, "sgd", 0.01, 0.01, 0.1)
    assert (cfg.poly, cfg.refine_poly, cfg.rect_ramp, cfg.fast, cfg.uncertain, cfg.rectify_train_mode) == (True, False, False, False, "background", True)
    assert learning_rates(cfg, 15_000) == pytest.approx((0.01 * 0.5 ** 0.9, 0.01))
    assert all(rect_weight(cfg, t) == 1.0 for t in (0, 1001, 29_999))


def test_colab_preset_is_the_paper_protocol_at_a_fifth_of_the_budget():
    paper, colab = check_config(make_config("paper", root="ACDC")), check_config(make_config("colab", root="ACDC"))
    assert run_schedule(colab) == {"refine_start": 200, "val_every": 40}
    assert colab.iters * 5 == paper.iters and colab.fast
    same = ("dataset", "labeled_patients", "img_size", "batch_size", "labeled_bs", "optimizer", "lr", "refine_lr", "consistency",
            "schedule", "uncertain", "guidance", "rectify_train_mode", "ckpt_every")
    assert all(getattr(colab, k) == getattr(paper, k) for k in same)


def test_fixed_schedule_keeps_the_constants_and_old_configs_read_as_fixed():
    cfg = make_config(root="ACDC", iters=600, schedule="fixed")
    assert run_schedule(cfg) == {"refine_start": 1000, "val_every": 200}
    assert unsup_weight(cfg, 599) == consistency_weight(599) < 1e-3
    assert run_schedule(make_config(root="ACDC", iters=600)) == {"refine_start": 20, "val_every": 4}
    old = {k: v for k, v in vars(cfg).items() if k != "schedule"}                  # a config.json written before `schedule` existed
    assert same_config(old, cfg) and not same_config(old, make_config(root="ACDC", iters=600))
    with pytest.raises(ConfigError, match="schedule='linear'"): check_config(make_config("smoke", schedule="linear"))
    with pytest.raises(ConfigError, match="consistency=-1"): check_config(make_config("smoke", consistency=-1))


@pytest.mark.parametrize("method", ["fixmatch", "diffrect"])
def test_weight_ramps_over_a_short_run(synthetic_root, tmp_path, method):
    iters = 40 if method == "fixmatch" else 12
    cfg = make_config("smoke", root=str(synthetic_root), method=method, iters=iters, val_every=iters, ckpt_every=iters)
    train(cfg, tmp_path / "run", progress=False)
    with open(tmp_path / "run" / "log.csv") as f: w = [float(r["value"]) for r in csv.DictReader(f) if r["key"] == "weight"]
    assert len(w) == iters and w[0] <= 1e-3 and w[-1] >= 0.09 and w == sorted(w)


def test_rect_ramp_scales_the_rectified_label_loss(synthetic_root):
    cfg = check_config(make_config("smoke", root=str(synthetic_root), method="diffrect", iters=100, rect_ramp=True))
    assert rect_weight(cfg, 0) < 0.01 and rect_weight(cfg, 99) == pytest.approx(1.0, abs=1e-3) and rect_weight(cfg, 50) == pytest.approx(unsup_weight(cfg, 50) / cfg.consistency)
    dev = torch.device("cpu")
    models, batch = build_models(cfg, 4, dev), TrainData(cfg).batch(0, dev)
    out = diffrect_iteration(models.seg, models.refine, models.opt_seg, models.opt_refine, batch, 10, refine_start=2,
                             weight=0.5, rect_weight=0.25, uncertain="ignore")        # 'ignore' reaches the rectifier as background
    assert out["weight"] == 0.5 and out["rect_weight"] == 0.25 and "rect" in out


def test_fast_mode_runs_on_cpu(synthetic_root, tmp_path, capsys):
    out = tmp_path / "fast"
    assert main(["--preset", "smoke", "--root", str(synthetic_root), "--method", "diffrect_proto", "--fast", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["fast"] is True
    fs = fast_settings(make_config("smoke", fast=True), torch.device("cpu"))
    assert fs["channels_last"] and not fs["compile"] and fs["amp"] in (None, "bf16")
    assert main(["--preset", "smoke", "--root", str(synthetic_root), "--method", "diffrect_proto", "--fast", "--out", str(out), "--quiet",
                 "--resume"]) == 0                                          # a finished fast run resumes as the same config


def test_heldout_validation_volumes_are_scored_apart(synthetic_root, tmp_path):
    cfg = make_config("smoke", root=str(synthetic_root), method="supervised", n_val=1)
    train(cfg, tmp_path / "run", progress=False)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    names = [c["name"] for c in m["val"]["per_case"]]
    assert [c["name"] for c in m["val_heldout"]["per_case"]] == names[1:] and len(names) >= 2


def test_a_forward_after_an_optimiser_step_sees_the_new_weights_under_autocast():
    from diffseg_edu.diffusion import optimiser_step
    torch.manual_seed(0)
    m, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(x).float().sum().backward(); optimiser_step(opt)
        after = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16): fresh = m(x)
    assert torch.equal(after, fresh)            # with a plain opt.step() `after` would still use the old bf16 weights


OTHER = {"rect_ramp": True, "refine_lr": 0.5, "refine_poly": True, "refine_start": 1, "guidance": "per_sample",
         "rectify_train_mode": False, "consistency": 0.7, "uncertain": "ignore", "pseudo_noise": 0.5,
         "proto_schedule": "fixed"}

@pytest.mark.parametrize("method", ["supervised", "fixmatch"])
def test_settings_a_baseline_never_reads(synthetic_root, tmp_path, method):
    "Changing every setting in UNREAD[method] leaves the run bit for bit the same, and same_config calls it the same run."
    from dataclasses import replace
    from diffseg_edu.config import UNREAD, same_config
    from diffseg_edu.checkpoints import read_checkpoint
    base = make_config("smoke", method=method, root=str(synthetic_root), iters=4)
    other = replace(base, **{k: OTHER[k] for k in UNREAD[method]})
    for cfg, name in ((base, "a"), (other, "b")): train(cfg, tmp_path / name, progress=False)
    assert (tmp_path / "a" / "log.csv").read_text() == (tmp_path / "b" / "log.csv").read_text()
    a, b = read_checkpoint(tmp_path / "a" / "last.pt"), read_checkpoint(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert same_config(json.loads((tmp_path / "a" / "config.json").read_text()), other)
    assert not same_config(json.loads((tmp_path / "a" / "config.json").read_text()), replace(base, lr=0.5))
