"Metrics against medpy, empty-mask policies, volume inference, evaluate and the diffseg-eval command."
import json
import numpy as np
import pytest
import torch
from scipy import ndimage
from diffseg_edu.data import H5Volumes
from diffseg_edu.metrics import PAPER_EMPTY, Evaluation, MetricError, asd, binary_metrics, dice, evaluate, hd95, jaccard, multiclass_metrics, predict_volume
from diffseg_edu.cli import eval_main as main
from diffseg_edu.unet import UNet
from diffseg_edu.checkpoints import save_checkpoint

medpy = pytest.importorskip("medpy.metric.binary")


def blob(shape, rng, fraction=0.2, sigma=2.0):
    field = ndimage.gaussian_filter(rng.random(shape), sigma)
    return field > np.quantile(field, 1 - fraction)


CASES = [((64, 64), None), ((48, 80), (0.7, 1.3)), ((10, 48, 40), None), ((8, 40, 56), (10.0, 1.5625, 1.5625)),
         ((5, 33, 47), 2.0), ((1, 40, 40), None)]


@pytest.mark.parametrize("shape, spacing", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_to_medpy_on_random_masks(shape, spacing, seed):
    rng = np.random.default_rng(seed)
    a, b = blob(shape, rng), blob(shape, rng, fraction=0.1 + 0.2 * rng.random())
    assert dice(a, b) == pytest.approx(medpy.dc(a, b), abs=1e-12)
    assert jaccard(a, b) == pytest.approx(medpy.jc(a, b), abs=1e-12)
    assert hd95(a, b, spacing) == pytest.approx(medpy.hd95(a, b, spacing), abs=1e-6)
    assert asd(a, b, spacing) == pytest.approx(medpy.asd(a, b, spacing), abs=1e-6)
    assert asd(b, a, spacing) == pytest.approx(medpy.asd(b, a, spacing), abs=1e-6)


def test_masks_touching_the_array_border_and_tiny_objects():
    a = np.zeros((4, 20, 20), bool); a[:, :6, :6] = True           # touches three faces of the array
    b = np.zeros((4, 20, 20), bool); b[2, 15, 15] = True            # a single voxel
    for x, y in ((a, b), (b, a), (a, a)):
        assert hd95(x, y) == pytest.approx(medpy.hd95(x, y), abs=1e-6)
        assert asd(x, y) == pytest.approx(medpy.asd(x, y), abs=1e-6)


def test_equal_to_medpy_on_real_acdc(acdc_root):
    vols = H5Volumes(acdc_root, "val")
    for i in (0, len(vols) - 1):
        y = vols.read(i)["label"]
        p = y.copy()                                  # a plausible wrong prediction: a shifted, thicker myocardium, no RV
        p[np.roll(ndimage.binary_dilation(y == 2), 3, axis=2) & (y != 3)] = 2
        p[p == 1] = 0
        got = multiclass_metrics(p, y, 4)
        for c in range(1, 4):
            a, b = p == c, y == c
            if a.any() and b.any():
                want = [medpy.dc(a, b), medpy.jc(a, b), medpy.hd95(a, b), medpy.asd(a, b)]
                np.testing.assert_allclose(got[c - 1], want, atol=1e-6)
            else:
                np.testing.assert_equal(got[c - 1], [0, 0, 50, 10])


def test_empty_mask_policies():
    a = np.zeros((3, 16, 16), bool); a[1, 4:9, 4:9] = True
    e = np.zeros_like(a)
    for pred, ref in ((e, a), (a, e), (e, e)):
        assert binary_metrics(pred, ref) == PAPER_EMPTY
    miss = binary_metrics(e, a, policy="nan")
    assert miss["dice"] == 0 and miss["jaccard"] == 0 and np.isnan(miss["hd95"]) and np.isnan(miss["asd"])
    assert all(np.isnan(v) for v in binary_metrics(e, e, policy="nan").values())
    with pytest.raises(MetricError, match="unknown empty-mask policy"):
        binary_metrics(a, a, policy="ignore")
    with pytest.raises(MetricError, match="unknown metrics"):
        binary_metrics(a, a, metrics=("dice", "hd100"))


def test_nan_policy_means_leave_cases_out():
    values = np.array([[[0.8, 0.6, 2.0, 1.0]], [[0.0, 0.0, np.nan, np.nan]]])
    ev = Evaluation(["a", "b"], ["x"], ("dice", "jaccard", "hd95", "asd"), values, policy="nan")
    assert ev.mean() == {"dice": 0.4, "jaccard": 0.3, "hd95": 2.0, "asd": 1.0}
    assert ev.n_left_out()["hd95"] == [1]
    d = ev.to_dict()
    assert d["per_case"][1]["x"]["hd95"] is None and json.dumps(d)


def test_ignore_index_and_bad_labels():
    y = np.zeros((16, 16), np.int64); y[4:10, 4:10] = 1; y[12:, 12:] = 255
    p = y.copy(); p[12:, 12:] = 1                                       # predictions in the ignored region do not count
    np.testing.assert_equal(multiclass_metrics(p, y, 2)[0], [1.0, 1.0, 0.0, 0.0])
    with pytest.raises(MetricError, match="outside 0..1"):
        multiclass_metrics(p, np.where(y == 1, 2, y), 2)
    with pytest.raises(MetricError, match="differs from label shape"):
        multiclass_metrics(p[:8], y, 2)


def test_predict_volume_matches_slicewise_route():
    torch.manual_seed(0)
    net = UNet(widths=(8, 16, 32, 64, 128)).eval()
    vol = np.random.default_rng(0).random((5, 70, 90)).astype(np.float32)
    pred = predict_volume(net, vol, (64, 64), batch_size=1)
    with torch.inference_mode():
        for z, s in enumerate(vol):
            small = ndimage.zoom(s, (64 / 70, 64 / 90), order=0)
            o = net(torch.from_numpy(small)[None, None]).argmax(1)[0].numpy()
            np.testing.assert_array_equal(pred[z], ndimage.zoom(o, (70 / 64, 90 / 64), order=0))
    assert predict_volume(net, vol[0], (64, 64)).shape == (70, 90)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    return save_checkpoint(path, UNet(widths=(8, 16, 32, 64, 128)), img_size=[64, 64], iteration=3)


def test_diffseg_eval_round_trip(checkpoint, synthetic_root, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["--ckpt", str(checkpoint), "--dataset", "synthetic", "--root", str(synthetic_root), "--split", "val", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "LV" in printed and "Dice" in printed and "input 64×64" in printed
    res = json.loads(out.read_text())
    from diffseg_edu.checkpoints import load_model
    model, _ = load_model(checkpoint)
    ev = evaluate(model, H5Volumes(synthetic_root, "val"), 4, patch_size=(64, 64))
    assert res["mean"]["dice"] == pytest.approx(ev.mean()["dice"], abs=1e-12)
    assert len(res["per_case"]) == len(H5Volumes(synthetic_root, "val")) and set(res["per_class"]["dice"]) == {"RV", "Myo", "LV"}
    assert main(["--ckpt", str(checkpoint), "--dataset", "synthetic", "--root", str(synthetic_root), "--split", "test"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["--ckpt", "{tmp}/missing.pt"], "checkpoint not found"),
    (["--ckpt", "{ckpt3}"], "predicts 3 classes but synthetic has 4"),
    (["--ckpt", "{ckpt}", "--split", "nosuch"], "nosuch.list: no such split list"),
    (["--ckpt", "{ckpt}", "--img-size", "100"], "--img-size 100: expected a positive multiple of 16"),
    ([], "--ckpt is required"),
])
def test_diffseg_eval_bad_input(argv, message, checkpoint, synthetic_root, tmp_path, capsys):
    ckpt3 = save_checkpoint(tmp_path / "three.pt", UNet(n_classes=3, widths=(8, 16, 32, 64, 128)))
    argv = [a.format(tmp=tmp_path, ckpt=checkpoint, ckpt3=ckpt3) for a in argv]
    assert main(argv + ["--dataset", "synthetic", "--root", str(synthetic_root)]) == 2
    assert message in capsys.readouterr().err
