"""The eight models: build by name, forward shapes, freezing policy, label rule, tracing, weights."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from ptxfast import CASCADES, CLASSIFIERS, MODEL_NAMES, SEGMENTERS
from ptxfast.models import (
    PIXEL_THRESHOLD,
    apply_freezing,
    build,
    kind_of,
    min_area,
    score_k,
    segmenter_label,
    segmenter_score,
)

pytestmark = pytest.mark.usefixtures("offline", "one_thread")
S = 64


@pytest.fixture(scope="module")
def models():
    """Each of the eight built once (random init) and shared by the read-only tests below."""
    torch.manual_seed(0)
    return {name: build(name, weights=None).eval() for name in MODEL_NAMES}


@pytest.fixture(scope="module")
def batch():
    return torch.rand(2, 1, S, S, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shape_and_finite(models, batch, name):
    with torch.inference_mode():
        out = models[name](batch)
    expected = (2, 1, S, S) if kind_of(name) == "segmenter" else (2, 1)
    assert out.shape == expected
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_fresh_classifier_head_starts_at_zero(models, batch, name):
    # A fresh head must not start far from p = 0.5: timm's EfficientNet head init put the first
    # logits near ±10, which the quick recipe could not recover from.
    with torch.no_grad():
        logits = models[name].eval()(batch)
    torch.testing.assert_close(logits, torch.zeros_like(logits))


def test_unknown_name_lists_the_eight():
    with pytest.raises(KeyError) as err:
        build("resnet50")
    for name in MODEL_NAMES:
        assert name in str(err.value)
    with pytest.raises(KeyError):
        kind_of("unet")


def test_kinds():
    assert [kind_of(n) for n in CLASSIFIERS] == ["classifier"] * 2
    assert [kind_of(n) for n in SEGMENTERS] == ["segmenter"] * 2
    assert [kind_of(n) for n in CASCADES] == ["cascade"] * 4


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _expected_trainable(model, name: str) -> set[str]:
    """The policy spelled out from the module tree (not from the prefixes models.py uses)."""
    if kind_of(name) == "segmenter":
        return {n for n, _ in model.named_parameters()}
    if kind_of(name) == "cascade":
        cls = name.split("+")[1]
        return {f"classifier.{n}" for n in _expected_trainable(model.classifier, cls)}
    net = model.net
    if name == "rn34":
        parts = {"layer3": net.layer3, "layer4": net.layer4, "fc": net.fc}
    else:
        parts = {
            "blocks.5": net.blocks[5],
            "blocks.6": net.blocks[6],
            "conv_head": net.conv_head,
            "bn2": net.bn2,
            "classifier": net.classifier,
        }
    return {f"net.{k}.{n}" for k, mod in parts.items() for n, _ in mod.named_parameters()}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_trainable_parameters_follow_the_policy(models, name):
    model = models[name]
    assert _trainable(model) == _expected_trainable(model, name)
    apply_freezing(model, name)  # idempotent
    assert _trainable(model) == _expected_trainable(model, name)


def test_frozen_counts_match_torchvision(models):
    # eb3: frozen part = torchvision's efficientnet_b3 features[0:6], parameter for parameter.
    tv = torchvision.models.efficientnet_b3()
    frozen = sum(p.numel() for p in models["eb3"].parameters() if not p.requires_grad)
    assert frozen == sum(p.numel() for p in tv.features[0:6].parameters())
    # rn34: frozen part = conv1, bn1, layer1, layer2 of torchvision's resnet34.
    tv = torchvision.models.resnet34()
    frozen = sum(p.numel() for p in models["rn34"].parameters() if not p.requires_grad)
    names = ("conv1", "bn1", "layer1", "layer2")
    assert frozen == sum(p.numel() for n, p in tv.named_parameters() if n.startswith(names))


def test_frozen_batchnorm_and_segmenter_stay_in_eval():
    model = build("eb3un+eb3", weights=None)
    model.train()
    assert not model.segmenter.training
    assert all(not m.training for m in model.segmenter.modules())
    net = model.classifier.net
    assert not net.bn1.training and not net.blocks[4][0].bn1.training  # frozen stages
    assert net.bn2.training and net.blocks[5][0].bn1.training  # trainable stages
    rn = build("rn34", weights=None).train()
    assert not rn.net.bn1.training and not rn.net.layer2[0].bn1.training
    assert rn.net.layer3[0].bn1.training
    model.eval()
    assert not any(m.training for m in model.modules())


def test_cascade_forward_with_mask_is_consistent(models, batch):
    model = models["rn34un+eb3"]
    with torch.inference_mode():
        logits, mask = model.forward_with_mask(batch)
        assert mask.shape == (2, 1, S, S) and ((mask >= 0) & (mask <= 1)).all()
        torch.testing.assert_close(mask, torch.sigmoid(model.segmenter(batch)))
        torch.testing.assert_close(logits, model(batch))
        stacked = torch.cat([batch, batch, mask], dim=1)
        torch.testing.assert_close(logits, model.classifier(stacked))


def test_cascade_takes_segmenter_weights(tmp_path):
    torch.manual_seed(3)
    seg = build("eb3un", weights=None)
    path = tmp_path / "seg.pt"
    torch.save({"model": seg.state_dict(), "epoch": 1}, path)
    for source in (path, seg.state_dict()):
        cascade = build("eb3un+rn34", weights=None, segmenter_weights=source)
        for k, v in seg.state_dict().items():
            torch.testing.assert_close(cascade.segmenter.state_dict()[k], v)
    with pytest.raises(RuntimeError):  # a different segmenter must not half-load
        build("rn34un+rn34", weights=None, segmenter_weights=path)


def test_min_area_scales_with_area():
    assert min_area(512) == 375
    assert min_area(1024) == 1500
    assert min_area(256) == 94
    assert min_area(64) == 6
    assert min_area(8) == 1
    assert score_k(512) == 376


@pytest.mark.parametrize("size", [32, 64, 512])
def test_segmenter_score_reproduces_the_area_rule(size):
    gen = torch.Generator().manual_seed(size)
    area = min_area(size)
    n = 64
    prob = torch.rand(n, 1, size, size, generator=gen) * PIXEL_THRESHOLD  # all below threshold
    # Image i gets `counts[i]` pixels above threshold, clustered around the decision boundary.
    counts = torch.randint(max(0, area - 3), area + 4, (n,), generator=gen)
    counts[:4] = torch.tensor([0, area, area + 1, min(size * size, 3 * area)])
    flat = prob.view(n, -1)
    for i, c in enumerate(counts.tolist()):
        idx = torch.randperm(size * size, generator=gen)[:c]
        flat[i, idx] = PIXEL_THRESHOLD + 1e-4 + torch.rand(c, generator=gen) * 0.6
    score = segmenter_score(prob, score_k(size))
    rule = segmenter_label(prob, size)
    assert torch.equal(score > PIXEL_THRESHOLD, rule)
    assert torch.equal(rule, counts > area)
    assert rule[:4].tolist() == [False, False, True, True]


# torch 2.14 marks TorchScript deprecated (FutureWarning); it is still the export path here.
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_trace_and_script_match_eager(models, name):
    model = models[name]
    x = torch.rand(1, 1, S, S, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        eager = model(x)
        traced = torch.jit.trace(model, x, check_trace=False)
        torch.testing.assert_close(traced(x), eager)
        if name == "eb3un+eb3":  # scripting the largest composite covers all the parts
            torch.testing.assert_close(torch.jit.script(model)(x), eager)


def test_imagenet_weights_from_hf_cache(tmp_path, monkeypatch, caplog):
    """weights="imagenet" finds a file in the HF cache layout and loads all but the head."""
    import huggingface_hub.constants as hfc
    from safetensors.torch import save_file
    from timm import create_model

    torch.manual_seed(4)
    ref = create_model("efficientnet_b3", num_classes=1000)  # an "ImageNet" head of 1000
    snap = tmp_path / "models--timm--efficientnet_b3.ra2_in1k" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, snap / "model.safetensors")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="ptxfast.models"):
        model = build("eb3")
    assert not caplog.records
    own = model.net.state_dict()
    torch.testing.assert_close(own["conv_stem.weight"], ref.state_dict()["conv_stem.weight"])
    torch.testing.assert_close(own["blocks.6.0.bn1.running_var"], ref.blocks[6][0].bn1.running_var)
    assert own["classifier.weight"].shape == (1, 1536)


def test_missing_imagenet_weights_warn_once(tmp_path, monkeypatch, caplog):
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="ptxfast.models"):
        build("rn34un")
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert "random init" in msg and "smp-hub/resnet34.imagenet" in msg and "--weights" in msg


def test_weights_from_a_state_dict_file(tmp_path):
    torch.manual_seed(5)
    src = build("rn34", weights=None)
    path = tmp_path / "rn34.pt"
    torch.save(src.net.state_dict(), path)  # a bare timm state dict
    model = build("rn34", weights=path)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)
    with pytest.raises(FileNotFoundError):
        build("rn34", weights=tmp_path / "missing.pt")
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="matches"):
        build("rn34", weights=tmp_path / "other.pt")


def test_bf16_models_normalise_in_float32():
    """Fused bf16 models normalise the float32 image with the exact constants and round once,
    closer to float32 than normalising in bf16 (the image, the constants, the difference and
    the quotient each rounded); an fp32 model's normalisation is unchanged."""
    from ptxfast.models import IMAGENET_MEAN, IMAGENET_STD, _Normalize, normalise_in_float32

    x = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    want = (x.expand(-1, 3, -1, -1) - mean) / std
    assert torch.equal(normalise_in_float32(_Normalize())(x), want)
    in_bf16 = _Normalize().to(torch.bfloat16)(x)  # a bf16 model as cast
    got = normalise_in_float32(_Normalize().to(torch.bfloat16))(x)
    assert got.dtype == in_bf16.dtype == torch.bfloat16
    assert torch.equal(got, want.bfloat16())  # one rounding
    assert (got.float() - want).abs().mean() < 0.6 * (in_bf16.float() - want).abs().mean()
