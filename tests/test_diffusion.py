"The DiffRect rectifier: parameter count, scheduler constants, palette, gradient flow, reproducibility, shapes and errors."
import numpy as np
import pytest
import torch
from diffseg_edu.data import IGNORE_INDEX
from diffseg_edu.diffusion import (OFFICIAL_ALPHA_BAR, RefineNet, calibration_guidance, diffrect_iteration, embed_labels,
                                   onehot_dice_loss, rectify, sample_scheduler, semantic_palette, stage_strong_to_weak, stage_weak_to_gt,
                                   train_scheduler)
from diffseg_edu.losses import complementary_loss, consistency_weight, pseudo_label, segmentation_losses
from diffseg_edu.unet import UNet, n_params


def test_parameter_count():
    assert n_params(RefineNet(n_classes=4, img_channels=1)) == 17_468_212
    assert n_params(RefineNet(n_classes=3)) == 17_468_212 - 16 * 9 - 1


def test_scheduler_constants():
    s = train_scheduler(10)
    np.testing.assert_allclose(s.alphas_cumprod[:9].numpy(), OFFICIAL_ALPHA_BAR[:9], atol=1e-5)
    assert s.alphas_cumprod[9].item() == pytest.approx(2.41e-5, rel=2e-3)
    assert s.config.prediction_type == "sample" and s.config.beta_schedule == "squaredcos_cap_v2"
    ddim, steps = sample_scheduler(s, (0, 9), clamp=True)
    assert ddim.timesteps.tolist() == [1, 0] and steps[ddim.timesteps].tolist() == [9, 0]
    assert ddim.config.clip_sample and ddim.config.clip_sample_range == 1.0
    np.testing.assert_allclose(ddim.alphas_cumprod.numpy(), s.alphas_cumprod[[0, 9]].numpy(), rtol=1e-6)


def test_ddim_step_matches_hand_computation():
    "One DDIM step (η = 0, clamped x̂₀, ε from the clamped x̂₀) from s = 9 to s = 0, by hand."
    s = train_scheduler(10); ddim, _ = sample_scheduler(s)
    z, x0 = torch.randn(2, 3), torch.randn(2, 3) * 2
    a9, a0 = s.alphas_cumprod[9], s.alphas_cumprod[0]
    x0c = x0.clamp(-1, 1)
    eps = (z - a9.sqrt() * x0c) / (1 - a9).sqrt()
    out = ddim.step(x0, 1, z, eta=0.0, use_clipped_model_output=True)
    torch.testing.assert_close(out.pred_original_sample, x0c)
    torch.testing.assert_close(out.prev_sample, a0.sqrt() * x0c + (1 - a0).sqrt() * eps, rtol=1e-5, atol=1e-5)


def test_palette_equals_onehot_for_four_classes_and_other_counts():
    y = torch.randint(0, 4, (3, 16, 16))
    expected = torch.nn.functional.one_hot(y, 4)[..., 1:].permute(0, 3, 1, 2).float()
    assert torch.equal(embed_labels(y, semantic_palette(4)), expected)
    assert semantic_palette(2).tolist() == [[0, 0, 0], [1, 1, 1]]
    for n in (5, 8):
        p = semantic_palette(n)
        assert p.shape == (n, 3) and p[0].tolist() == [0, 0, 0] and torch.pdist(p).min() > 0.4
    with pytest.raises(ValueError, match="outside the palette"):
        embed_labels(torch.full((1, 2, 2), 7), semantic_palette(4))


@pytest.mark.parametrize("n_classes, size", [(2, (64, 64)), (4, (128, 96)), (5, (80, 112)), (4, (16, 32))])
def test_shapes_for_class_counts_and_sizes(n_classes, size):
    net = RefineNet(n_classes=n_classes)
    y = torch.randint(0, n_classes, (2, *size)); x = torch.rand(2, 1, *size)
    lat, logits, z = net(y, x, torch.full((2,), 100.0), good=y)
    assert logits.shape == (2, n_classes, *size) and z["z0"].shape == (2, 256, size[0] // 16, size[1] // 16)
    assert net.eval()(y, x, torch.zeros(2)).shape == (2, n_classes, *size)


def test_bad_size_is_a_clear_error():
    net = RefineNet()
    with pytest.raises(ValueError, match=r"\(72, 64\) is not divisible by 16"):
        net(torch.zeros(1, 72, 64, dtype=torch.long), torch.rand(1, 1, 72, 64), torch.zeros(1))


def test_guidance_and_pseudo_labels():
    y = torch.zeros(2, 8, 8, dtype=torch.long); y[:, 2:6, 2:6] = 1
    assert torch.equal(calibration_guidance(y, y, 4), torch.zeros(2))
    bad = y.clone(); bad[1] = 0
    per = calibration_guidance(bad, y, 4, per_sample=True)
    assert per[0] == 0 and per[1] > 0
    assert calibration_guidance(bad, y, 4).unique().numel() == 1
    probs = torch.tensor([[0.1, 0.4, 0.3, 0.2]]).reshape(1, 4, 1, 1)
    assert pseudo_label(probs).item() == 0 and pseudo_label(probs, uncertain="ignore").item() == IGNORE_INDEX
    assert consistency_weight(0) == pytest.approx(6.7e-4, rel=0.01) and consistency_weight(29999) == pytest.approx(0.1, rel=1e-3)
    assert consistency_weight(15000) == pytest.approx(0.0287, rel=1e-2) and consistency_weight(30000) == 0.1


def _batch(size=64, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g)
    y = torch.randint(0, 4, (n, size, size), generator=g)
    L = torch.arange(n) < n // 2
    return {"image_weak": x, "image_strong": (x * 1.1).clamp(0, 1), "label": torch.where(L[:, None, None], y, IGNORE_INDEX), "labeled_mask": L}


def test_gradients_reach_only_the_modules_they_should():
    torch.manual_seed(0)
    seg, ref = UNet(), RefineNet()
    b = _batch()
    s = segmentation_losses(seg(b["image_weak"]), seg(b["image_strong"]), b["label"], b["labeled_mask"], 0.1)
    assert not s["pl_w"].requires_grad
    b1 = stage_weak_to_gt(ref, b["image_weak"], s["pl_w"], s["pl_s"], b["label"], b["labeled_mask"])
    b2 = stage_strong_to_weak(ref, b["image_strong"], s["pl_s"], s["pl_w"], b1, b["labeled_mask"])
    (b1["loss"] + b2["loss"]).backward()
    assert all(p.grad is None for p in seg.parameters())                 # nothing from the refine loss into the seg net
    assert all(p.grad is not None for p in ref.parameters())
    # the latent target carries no graph: its encoder pass runs without autograd
    _, _, z = ref(s["pl_w"], b["image_weak"], b1["guidance"], good=s["pl_w"])
    assert z["z0"].grad_fn is None and z["z0_hat"].grad_fn is not None
    labels = rectify(ref, b["image_weak"], s["pl_w"], b1["guidance"])
    assert labels.shape == (4, 64, 64) and not labels.requires_grad and ref.training


def test_seeded_iteration_is_reproducible():
    def run():
        torch.manual_seed(0)
        seg, ref = UNet(), RefineNet()
        opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (seg, ref)]
        out = [diffrect_iteration(seg, ref, *opts, _batch(), iteration=k) for k in (1000, 1001)]
        return out, torch.cat([p.detach().flatten() for p in seg.parameters()])
    (a, pa), (b, pb) = run(), run()
    assert a == b and torch.equal(pa, pb)
    assert "rect" not in a[0] and "rect" in a[1]
    assert all(np.isfinite(v) for v in a[1].values())


def test_complementary_loss_weight():
    pw, ps = torch.rand(2, 4, 8, 8).softmax(1), torch.rand(2, 4, 8, 8).softmax(1)
    assert complementary_loss(pw, ps) < complementary_loss(pw, ps, square_weight=False)


def test_stagewise_backward_gives_identical_gradients():
    "diffrect_iteration back-propagates L_b1 then λ·L_b2 separately (lower memory); the gradients equal one combined backward."
    def grads(stagewise):
        torch.manual_seed(0)
        seg, ref, b = UNet(), RefineNet(), _batch()
        s = segmentation_losses(seg(b["image_weak"]), seg(b["image_strong"]), b["label"], b["labeled_mask"], 0.1)
        b1 = stage_weak_to_gt(ref, b["image_weak"], s["pl_w"], s["pl_s"], b["label"], b["labeled_mask"])
        if stagewise: b1["loss"].backward()
        b2 = stage_strong_to_weak(ref, b["image_strong"], s["pl_s"], s["pl_w"], b1, b["labeled_mask"])
        (0.1 * b2["loss"]).backward() if stagewise else (b1["loss"] + 0.1 * b2["loss"]).backward()
        return [p.grad for p in ref.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(grads(False), grads(True)))


def test_pseudo_noise_damages_what_the_rectifier_sees_reproducibly():
    "`pseudo_noise` (a study switch): the rectifier's losses change, the segmenter's own step does not, same seed = same run."
    def run(noise, seed=0):
        torch.manual_seed(0)
        seg, ref = UNet(), RefineNet()
        opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (seg, ref)]
        return diffrect_iteration(seg, ref, *opts, _batch(), iteration=1001, pseudo_noise=noise, noise_seed=seed)
    clean, noisy = run(0.0), run(1.0)
    assert clean["seg"] == noisy["seg"] and clean["b1"] != noisy["b1"]
    assert run(1.0) == noisy and run(1.0, seed=1)["b1"] != noisy["b1"]
