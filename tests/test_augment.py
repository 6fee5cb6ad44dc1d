"Weak/strong augmentation: shared geometry, reproducibility, and agreement with the official PIL/scipy operations."
import numpy as np, pytest, torch
from PIL import Image, ImageEnhance, ImageFilter
from scipy import ndimage
from diffseg_edu.data import (AugmentConfig, WeakStrongAugment, enhance, gaussian_blur, rotate_nearest,
                              sample_augment_params, zoom_nearest, IGNORE_INDEX)

def batch(n=8, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):                                           # asymmetric blobs, so flips/rotations show
        y, x = torch.randint(8, size - 24, (2,), generator=g).tolist()
        label[i, y:y + 16, x:x + 8] = 1; label[i, y + 4:y + 10, x + 8:x + 20] = 2; label[i, y + 6:y + 8, x + 2:x + 4] = 3
    image = label.float()[:, None] * 0.25 + 0.1                  # the image encodes the label
    return image, label, torch.arange(n) < n // 2

@pytest.mark.parametrize("shape, size", [((224, 154), (256, 256)), ((428, 512), (256, 256)), ((97, 131), (64, 48)), ((5, 7), (1, 3))])
def test_zoom_nearest_matches_scipy(shape, size):
    a = np.random.rand(*shape).astype(np.float32)
    assert np.array_equal(zoom_nearest(torch.from_numpy(a), size).numpy(), ndimage.zoom(a, (size[0] / shape[0], size[1] / shape[1]), order=0))

def test_geometry_is_shared_between_views_and_label():
    image, label, labeled = batch()
    out = WeakStrongAugment(AugmentConfig(p_rotate=1.0))(image, label, labeled, torch.Generator().manual_seed(1))
    weak = out["image_weak"][:, 0]
    decoded = torch.round((weak * 255 + 1) / 255 / 0.25 - 0.4).clamp(min=0).long()   # invert floor-quantised 0.25*y+0.1
    decoded[weak == 0] = 0                                                            # rotation zero fill = background
    assert torch.equal(decoded[labeled], out["label"][labeled])
    assert (out["label"][~labeled] == IGNORE_INDEX).all()
    assert not torch.equal(out["label"][labeled], label[labeled])                    # something did move

def test_reproducible_and_seed_dependent():
    image, label, labeled = batch()
    aug = WeakStrongAugment()
    a = aug(image, label, labeled, torch.Generator().manual_seed(7))
    b = aug(image, label, labeled, torch.Generator().manual_seed(7))
    c = aug(image, label, labeled, torch.Generator().manual_seed(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["image_strong"], c["image_strong"])

def test_strong_view_only_changes_intensity():
    image, label, labeled = batch()
    off = WeakStrongAugment(AugmentConfig(color=False, blur=False))(image, label, labeled, torch.Generator().manual_seed(0))
    assert torch.equal(off["image_weak"], off["image_strong"])
    on = WeakStrongAugment(AugmentConfig(p_enhance=1.0, p_blur=1.0))(image, label, labeled, torch.Generator().manual_seed(0))
    assert not torch.equal(on["image_weak"], on["image_strong"]) and on["image_strong"].min() >= 0 and on["image_strong"].max() <= 1

def test_parameters_follow_the_official_distribution():
    p = sample_augment_params(20000, AugmentConfig(), torch.Generator().manual_seed(0))
    for k in ("flip_lr", "flip_ud"): assert abs(p[k].float().mean() - 0.5) < 0.02
    rotated = p["angle"] != 0
    assert abs(rotated.float().mean() - 0.5) < 0.02 and p["angle"].max() == 358 and (p["angle"] == p["angle"].round()).all()
    assert p["factor"].min() >= 1 and p["factor"].max() < 1.1
    assert p["sigma"].max() < 1 and abs((p["sigma"] > 0).float().mean() - 0.5) < 0.02

def _pil_rotate(label: np.ndarray, angle: int) -> np.ndarray:
    "The official c_random_rotate on one image: PIL rotate(expand=True), then centre crop."
    im = Image.fromarray(label.astype(np.uint8)).rotate(angle, expand=True)
    w, h = im.size; H, W = label.shape
    left, top = int(round((w - W) / 2.0)), int(round((h - H) / 2.0))
    return np.asarray(im.crop((left, top, left + W, top + H)))

@pytest.mark.parametrize("angle", [17, 90, 135, 200, 358])
def test_rotation_agrees_with_pil(angle):
    _, label, _ = batch(n=1, size=64, seed=angle)
    ours = rotate_nearest(label[:, None].float(), torch.tensor([float(angle)]))[0, 0].long().numpy()
    agree = (ours == _pil_rotate(label[0].numpy(), angle)).mean()
    assert agree > 0.98, agree

@pytest.mark.parametrize("op, pil", [(0, ImageEnhance.Contrast), (1, ImageEnhance.Brightness), (2, ImageEnhance.Sharpness)])
def test_enhancements_agree_with_pil(op, pil):
    rng = np.random.default_rng(op)
    img8 = ndimage.gaussian_filter(rng.integers(0, 256, (48, 48)).astype(float), 1.5).astype(np.uint8)
    factor = 1.07
    ref = np.asarray(pil(Image.fromarray(img8)).enhance(factor)).astype(np.float32) / 255
    ours = enhance(torch.from_numpy(img8 / 255.0).float()[None, None], op, torch.tensor([factor]))[0, 0].numpy()
    assert np.abs(ours - ref).max() <= 1.5 / 255                                   # PIL rounds to 8 bits

def test_blur_is_close_to_pil():
    rng = np.random.default_rng(0)
    img8 = rng.integers(0, 256, (48, 48)).astype(np.uint8)
    ref = np.asarray(Image.fromarray(img8).filter(ImageFilter.GaussianBlur(0.8))).astype(np.float32) / 255
    ours = gaussian_blur(torch.from_numpy(img8 / 255.0).float()[None, None], torch.tensor([0.8]))[0, 0].numpy()
    assert np.abs(ours - ref)[4:-4, 4:-4].mean() < 0.02                           # PIL approximates with box blurs
    same = gaussian_blur(torch.from_numpy(img8 / 255.0).float()[None, None], torch.tensor([0.0]))
    assert torch.allclose(same[0, 0], torch.from_numpy(img8 / 255.0).float())

def test_quantisation_is_floor_to_8_bits():
    image, label, labeled = batch()
    out = WeakStrongAugment(AugmentConfig(p_flip=0, p_rotate=0))(image, label, labeled)
    assert torch.equal(out["image_weak"], torch.floor(image * 255) / 255)
