"Prototype contrastive consistency: the maths on hand-built tensors, the hook in DiffRect, the noise study and its command."
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffseg_edu.data import IGNORE_INDEX
from diffseg_edu.diffusion import RefineNet, diffrect_iteration, stage_strong_to_weak, stage_weak_to_gt
from diffseg_edu.noise import NoiseStudyConfig, noise_study, summarise_study
from diffseg_edu.prototypes import PrototypeConfig, PrototypeContrast, PrototypeError, PrototypeMemory, label_dice, masked_average, noisy_labels, prototype_consistency, prototype_nce, soft_masks
from diffseg_edu.unet import UNet
from diffseg_edu.cli import bench_main as bench_main


def test_soft_masks_fractions_and_ignore():
    lab = torch.zeros(1, 4, 4, dtype=torch.long)
    lab[0, :2, :2] = 2; lab[0, 0, 2] = 1; lab[0, 3, 3] = IGNORE_INDEX
    w = soft_masks(lab, 3, (2, 2))
    assert torch.allclose(w[0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(w[0, :, 0, 1], torch.tensor([0.75, 0.25, 0.0]))
    assert torch.allclose(w[0, :, 1, 1], torch.tensor([0.75, 0.0, 0.0]))      # one ignored pixel: fractions sum to 3/4
    with pytest.raises(PrototypeError, match=r"label values \[7\] outside 0..2"):
        soft_masks(torch.full((1, 4, 4), 7), 3, (2, 2))


def test_masked_average_by_hand_and_missing_class():
    emb = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])                          # (1, D=2, 1, 2): cells (1, 0) and (0, 2)
    masks = torch.tensor([[[[0.5, 0.5]], [[0.5, 0.0]], [[0.0, 0.0]]]])          # (1, K=3, 1, 2)
    p, mass = masked_average(emb, masks)
    assert torch.allclose(p[0], torch.tensor([0.5, 1.0]), atol=1e-5)
    assert torch.allclose(p[1], torch.tensor([1.0, 0.0]), atol=1e-5)
    assert torch.equal(p[2], torch.zeros(2)) and mass.tolist() == [1.0, 0.5, 0.0]
    with pytest.raises(PrototypeError, match="do not match"):
        masked_average(emb, masks[:, :, :, :1])


def test_ema_update_only_present_classes():
    mem = PrototypeMemory(3, 2, momentum=0.5)
    mem.update(torch.tensor([[0.0, 4.0], [3.0, 0.0], [1.0, 1.0]]), torch.tensor([True, True, False]))
    assert torch.allclose(mem.protos, torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]))
    mem.update(torch.tensor([[1.0, 0.0], [9.0, 9.0], [1.0, 1.0]]), torch.tensor([True, False, True]))
    assert torch.allclose(mem.protos[0], F.normalize(torch.tensor([0.5, 0.5]), dim=0))
    assert torch.equal(mem.protos[1], torch.tensor([1.0, 0.0]))                  # absent: unchanged
    assert torch.allclose(mem.protos[2], F.normalize(torch.tensor([1.0, 1.0]), dim=0))   # first sight: copied
    assert mem.seen.tolist() == [True, True, True]
    with pytest.raises(PrototypeError, match="momentum=1"):
        PrototypeMemory(3, 2, momentum=1)


def test_info_nce_equals_direct_computation():
    g = torch.Generator().manual_seed(3)
    q, P = F.normalize(torch.randn(11, 6, generator=g), dim=1), F.normalize(torch.randn(4, 6, generator=g), dim=1)
    y = torch.randint(0, 4, (11,), generator=g)
    for tau in (0.05, 0.1, 0.5):
        direct = np.mean([-np.log(np.exp(float(q[i] @ P[y[i]]) / tau) / sum(np.exp(float(q[i] @ P[c]) / tau) for c in range(4)))
                          for i in range(11)])
        assert abs(prototype_nce(q, y, P, torch.ones(4, dtype=torch.bool), tau).item() - direct) < 1e-5


def test_consistency_by_hand():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = prototype_consistency(torch.tensor([[2.0, 0.0], [1.0, 0.0]]), anchors, torch.tensor([True, True]))
    assert abs(v.item() - 0.5) < 1e-6                                           # (0 + 1) / 2


def _latents(B=4, h=2, w=2, C=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"z0": torch.randn(B, C, h, w, generator=g), "z0_hat": torch.randn(B, C, h, w, generator=g).requires_grad_()}


def test_all_ignored_batch_gives_zero_not_nan():
    hook = PrototypeContrast(4, beta=1.0, rampup=0)
    lat = _latents()
    out = hook("b1", lat, torch.full((4, 32, 32), IGNORE_INDEX), torch.tensor([True, True, False, False]))
    assert out["loss"].item() == 0.0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert lat["z0_hat"].grad is not None and lat["z0_hat"].grad.abs().sum().item() == 0.0
    assert not hook.memory.seen.any()


def test_missing_class_leaves_the_softmax():
    hook = PrototypeContrast(4, beta=1.0, rampup=0, consistency=False)
    lab = torch.zeros(4, 32, 32, dtype=torch.long); lab[:, :16] = 1           # classes 0 and 1 only
    lat = _latents()
    out = hook("b1", lat, lab, torch.tensor([True, True, False, False]))
    assert hook.memory.seen.tolist() == [True, True, False, False]
    q = F.normalize(hook.head(lat["z0_hat"]), dim=1).permute(0, 2, 3, 1).reshape(-1, 128)
    y = soft_masks(lab, 4, (2, 2)).argmax(1).reshape(-1)
    logits = q @ hook.memory.protos[:2].T / 0.1
    assert abs(out["nce"].item() - F.cross_entropy(logits, y).item()) < 1e-5


def _batch(n=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g)
    y = torch.zeros(n, size, size, dtype=torch.long)
    y[:, 8:24, 8:24] = 1; y[:, 12:20, 12:20] = 2; y[:, 14:18, 14:18] = 3
    L = torch.arange(n) < n // 2
    return {"image_weak": x, "image_strong": (x * 1.05).clamp(0, 1), "label": torch.where(L[:, None, None], y, IGNORE_INDEX), "labeled_mask": L}


def _iteration(beta, iteration=1500, **cfg):
    torch.manual_seed(0)
    seg, ref = UNet(), RefineNet()
    hook = None if beta is None else PrototypeContrast(4, beta=beta, **cfg)
    opt_s = torch.optim.SGD(seg.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    opt_r = torch.optim.SGD([*ref.parameters(), *(hook.parameters() if hook else [])], lr=0.01, momentum=0.9, weight_decay=1e-4)
    out = diffrect_iteration(seg, ref, opt_s, opt_r, _batch(), iteration=iteration, hook=hook)
    return out, seg, ref, hook


def test_beta_zero_is_plain_diffrect_exactly():
    plain, seg_a, ref_a, _ = _iteration(None)
    zero, seg_b, ref_b, _ = _iteration(0.0)
    assert plain == zero
    for a, b in ((seg_a, seg_b), (ref_a, ref_b)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with_term, _, ref_c, hook = _iteration(1.0, rampup=0)
    assert {"nce_b1", "cons_b1", "nce_b2", "cons_b2"} <= set(with_term) and all(np.isfinite(v) for v in with_term.values())
    assert with_term["b1"] == plain["b1"]                                      # the DiffRect part of the objective is unchanged
    assert not all(torch.equal(x, y) for x, y in zip(ref_a.state_dict().values(), ref_c.state_dict().values()))


def test_b2_waits_for_b2_start():
    out, *_ = _iteration(1.0, iteration=500, rampup=0)
    assert "nce_b1" in out and "nce_b2" not in out


def test_gradients_flow_only_where_intended():
    torch.manual_seed(0)
    b = _batch()
    seg, ref, hook = UNet(), RefineNet(), PrototypeContrast(4, beta=1.0, rampup=0)
    logits = seg(b["image_weak"])                                                # graph kept: must still get no gradient
    pl = logits.detach().argmax(1)
    b1 = stage_weak_to_gt(ref, b["image_weak"], pl, pl, b["label"], b["labeled_mask"], hook=hook)
    b1["hook"]["loss"].backward()
    assert all(p.grad is None for p in seg.parameters())
    assert all(p.grad is None for p in ref.decoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hook.head.parameters())
    assert all(p.grad is not None for p in ref.denoiser.parameters())
    assert not hook.memory.protos.requires_grad and hook.memory.protos.grad_fn is None


def test_confident_mask_hides_unlabelled_pixels():
    b = _batch()
    L = b["labeled_mask"]
    seen = {}
    def spy(stage, latents, labels, labeled, iteration):
        seen[stage] = labels.clone(); return None
    ref = RefineNet()
    pl = torch.ones(6, 32, 32, dtype=torch.long)
    conf = torch.zeros(6, 32, 32, dtype=torch.bool); conf[:, :4] = True
    b1 = stage_weak_to_gt(ref, b["image_weak"], pl, pl, b["label"], L, hook=spy, confident=conf)
    assert torch.equal(seen["b1"][L], b["label"][L])                            # labelled rows: ground truth everywhere
    assert (seen["b1"][~L][:, 4:] == IGNORE_INDEX).all() and (seen["b1"][~L][:, :4] == 1).all()
    stage_strong_to_weak(ref, b["image_strong"], pl, pl, b1, L, hook=spy, confident=conf)
    assert (seen["b2"][:, 4:] == IGNORE_INDEX).all()


@pytest.mark.parametrize("cfg", [dict(memory="batch"), dict(sources="gt+pseudo"), dict(attach="decoder"), dict(attach="label_encoder"),
                                 dict(consistency=False, tau=0.5)])
def test_ablation_switches_run(cfg):
    out, *_ , hook = _iteration(1.0, rampup=0, **cfg)
    assert np.isfinite(out["nce_b1"]) and out["nce_b1"] > 0


def test_memory_travels_in_checkpoints(tmp_path):
    _, _, _, hook = _iteration(1.0, rampup=0)
    torch.save(hook.state_dict(), tmp_path / "p.pt")
    fresh = PrototypeContrast(4)
    assert not fresh.memory.seen.any()
    fresh.load_state_dict(torch.load(tmp_path / "p.pt"))
    assert torch.equal(fresh.memory.protos, hook.memory.protos) and fresh.memory.seen.all()


def test_config_errors():
    for kw, msg in ((dict(memory="fifo"), "memory='fifo'"), (dict(sources="pseudo"), "sources='pseudo'"), (dict(attach="x"), "attach='x'"),
                    (dict(tau=-1), "tau=-1"), (dict(beta=-0.1), "beta=-0.1"), (dict(min_fraction=0), "min_fraction=0")):
        with pytest.raises(PrototypeError, match=msg):
            PrototypeConfig(**kw)
    with pytest.raises(PrototypeError, match="img_size=72"):
        NoiseStudyConfig(img_size=72)
    with pytest.raises(PrototypeError, match="levels"):
        NoiseStudyConfig(levels=(0.0, 1.5))


def test_noisy_labels_levels():
    y = torch.zeros(4, 64, 64, dtype=torch.long); y[:, 16:48, 16:48] = 1; y[:, 24:40, 24:40] = 2; y[:, 28:36, 28:36] = 3
    assert torch.equal(noisy_labels(y, 0.0, 4, torch.Generator().manual_seed(0)), y)
    a, b = (noisy_labels(y, 0.3, 4, torch.Generator().manual_seed(5)) for _ in range(2))
    assert torch.equal(a, b)                                                    # seeded
    d = [np.mean([label_dice(noisy_labels(y, lv, 4, torch.Generator().manual_seed(s)), y, 4) for s in range(4)]) for lv in (0.0, 0.2, 0.5)]
    assert d[0] == 1.0 and d[0] > d[1] > d[2]
    with pytest.raises(PrototypeError, match="noise level 1.5"):
        noisy_labels(y, 1.5, 4, torch.Generator())


def test_summary_statistics():
    runs = [{"level": 0.1, "method": m, "seed": s, "dice_noisy": 0.8, "dice_rectified": r}
            for m, rs in (("diffrect", (0.7, 0.9)), ("prototypes", (0.85, 0.95))) for s, r in enumerate(rs)]
    rows = {r["method"]: r for r in summarise_study(runs)}
    assert rows["diffrect"]["dice_rectified"] == pytest.approx((0.8, 0.1))
    assert rows["prototypes"]["gain"] == pytest.approx((0.1, 0.05))


def test_bench_noise_command(synthetic_root, tmp_path, capsys):
    out = tmp_path / "noise"
    rc = bench_main(["noise", "--root", str(synthetic_root), "--levels", "0", "0.4", "--seeds", "0", "--steps", "2", "--img-size", "32",
                     "--n-eval", "6", "--workers", "1", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "noise.json").read_text())
    assert len(res["runs"]) == 4 and {r["method"] for r in res["runs"]} == {"diffrect", "prototypes"}
    assert (out / "noise.png").stat().st_size > 0 and "| 0.4 |" in (out / "noise.md").read_text()
    assert "noise level" in capsys.readouterr().out
    assert bench_main(["noise", "--root", str(synthetic_root), "--img-size", "72", "--out", str(out)]) == 2
    assert "img_size=72" in capsys.readouterr().err
    assert bench_main(["noise", "--dataset", "acdc", "--out", str(out)]) == 2
    assert bench_main(["noise", "--root", str(tmp_path / "missing"), "--out", str(out)]) == 2


def test_noise_study_on_acdc(acdc_root):
    res = noise_study(NoiseStudyConfig(dataset="acdc", root=str(acdc_root), levels=(0.3,), seeds=(0,), steps=1, n_eval=4, workers=1), progress=False)
    assert len(res["runs"]) == 2 and 0 < res["runs"][0]["dice_noisy"] < 1


def test_training_run_term_follows_the_run_schedule():
    "build_models hands the run's schedule to the hook: β reaches β₀ at the run's end, (b2) joins at refine_start."
    from diffseg_edu.config import ConfigError, check_config, make_config, same_config
    from diffseg_edu.train import build_models
    cfg = make_config("xa-cpu", method="diffrect_proto")
    hook = build_models(cfg, 4, torch.device("cpu")).hook
    assert abs(hook.weight(cfg.iters) - 0.1) < 1e-9 and hook.b2_start() == cfg.refine_start == 200
    assert hook.weight(cfg.iters // 2) > 0.01                      # λ's shape at mid-run: about 0.29 β₀
    fixed = build_models(make_config("xa-cpu", method="diffrect_proto", proto_schedule="fixed"), 4,
                         torch.device("cpu")).hook
    assert fixed.weight(cfg.iters) < 0.003 and fixed.b2_start() == 1000
    official = build_models(make_config("paper", method="diffrect_proto", schedule="fixed"), 4, torch.device("cpu")).hook
    assert official.run_iters is None and official.b2_start() == 1000  # the official schedule: 150-iteration steps
    # a config saved before the switch existed ran the fixed schedule; plain DiffRect never reads it
    saved = {k: v for k, v in json.loads(json.dumps(__import__("dataclasses").asdict(cfg))).items() if k != "proto_schedule"}
    assert not same_config(saved, cfg) and same_config(saved, make_config("xa-cpu", method="diffrect_proto",
                                                                          proto_schedule="fixed"))
    assert same_config({**saved, "method": "diffrect"}, make_config("xa-cpu"))
    check_config(make_config("xa-cpu", method="diffrect_proto", proto={"sources": "gt+pseudo", "tau": 0.2}))  # allowed
    with pytest.raises(ConfigError, match="b2_start=300: applies with proto_schedule='fixed'"):
        check_config(make_config("xa-cpu", method="diffrect_proto", proto={"b2_start": 300}))
