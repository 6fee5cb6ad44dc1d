"The U-Net: parameter counts, features, layouts, official key names, checkpoints and their errors."
import re

import numpy as np
import pytest
import torch
from diffseg_edu.checkpoints import ModelError, build_model, fuse_conv_bn, load_model, save_checkpoint
from diffseg_edu.unet import UNet, dice_loss, fit_supervised, n_params, official_keys
from diffseg_edu.data import H5Slices


@pytest.mark.parametrize("kwargs, expected", [({}, 1_813_764), ({"n_classes": 3}, 1_813_619),
                                              ({"up_mode": "transpose"}, 1_944_324)])
def test_parameter_count(kwargs, expected):
    assert n_params(UNet(**kwargs)) == expected


def test_features_and_shapes():
    out = UNet(n_classes=5).eval()(torch.rand(2, 1, 64, 96), return_features=True)
    assert out["logits"].shape == (2, 5, 64, 96)
    assert out["bottleneck"].shape == (2, 256, 4, 6)
    assert out["decoder"].shape == (2, 16, 64, 96)


def test_bad_sizes_and_arguments():
    with pytest.raises(ValueError, match="not divisible by 16"):
        UNet()(torch.rand(1, 1, 40, 64))
    with pytest.raises(ValueError, match="dropout rates"):
        UNet(widths=(8, 16), dropout=(0.1,))
    with pytest.raises(ValueError, match="at least 2"):
        UNet(n_classes=1)


def test_channels_last_autocast_and_fusion_agree():
    torch.manual_seed(0)
    net = UNet().eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.inference_mode():
        ref = net(x)
        cl = fuse_conv_bn(net).to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = net(x)
    assert torch.allclose(cl, ref, atol=1e-4)
    assert half.dtype == torch.bfloat16
    assert (half.float().argmax(1) == ref.argmax(1)).float().mean() > 0.99


def test_official_state_dict_loads():
    torch.manual_seed(0)
    net = UNet()
    official = {}
    for k, v in net.state_dict().items():   # rename to the SSL4MIS spelling, as saved by nn.DataParallel
        k = k.replace("encoder.down.", "encoder.down").replace("decoder.up.", "decoder.up")
        k = re.sub(r"(down|up)(\d)", lambda m: f"{m.group(1)}{int(m.group(2)) + 1}", k)
        official["module." + k] = v
    assert "module.encoder.down4.maxpool_conv.1.conv_conv.0.weight" in official
    assert set(official_keys(official)) == set(net.state_dict())
    twin = UNet(); twin.load_state_dict(official)
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), net.state_dict().values()))


def test_checkpoint_round_trip_and_errors(tmp_path):
    net = UNet(n_classes=3, widths=(8, 16, 32, 64, 128))
    path = save_checkpoint(tmp_path / "run" / "best.pt", net, img_size=[128, 128], iteration=7)
    assert not list(tmp_path.glob("run/*.tmp"))
    model, ckpt = load_model(path)
    assert ckpt["iteration"] == 7 and ckpt["model"]["kwargs"]["widths"] == [8, 16, 32, 64, 128]
    assert not model.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), net.state_dict().values()))
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="garbage.pt: cannot be read"):
        load_model(tmp_path / "garbage.pt")
    with pytest.raises(ModelError, match="unknown model 'vnet'"):
        build_model({"name": "vnet"})
    torch.save({"model": {"name": "unet", "kwargs": {"n_classes": 4}}, "state_dict": net.state_dict()}, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="weights do not fit"):
        load_model(tmp_path / "bad.pt")


def test_dice_loss_and_short_fit(synthetic_root):
    y = torch.randint(0, 4, (2, 8, 8))
    onehot = torch.nn.functional.one_hot(y, 4).permute(0, 3, 1, 2).float()
    assert dice_loss(onehot * 40, y, 4) < 1e-5
    torch.manual_seed(0)
    net = UNet(widths=(8, 16, 32, 64, 128))
    losses = fit_supervised(net, H5Slices(synthetic_root), 6, patch_size=(64, 64), batch_size=4, seed=0)
    assert len(losses) == 6 and np.isfinite(losses).all()
    with pytest.raises(ValueError, match="optimizer 'rmsprop'"):
        fit_supervised(net, H5Slices(synthetic_root), 1, optimizer="rmsprop")
