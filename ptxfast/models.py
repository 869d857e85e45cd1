"""The paper's eight models, built by name, and the rules that turn their outputs into labels.

The label rules live here once, beside the models: `CLASSIFIER_THRESHOLD` (classifiers and
cascades), `PIXEL_THRESHOLD` and `min_area` (segmenters), `score_k` / `segmenter_score` (the
segmenter's continuous image score), and `label_threshold` / `thresholds`, the per-kind rule the
fused graph, training, evaluation, export sidecars and predictors all apply.

Every model takes N×1×S×S float images in [0, 1] and normalizes them itself (gray repeated to
three channels, ImageNet mean/std as buffers), so an exported graph takes the single channel the
host already has. Forward passes contain no data-dependent Python control flow, so every model
traces with `torch.jit.trace` and fuses into one graph.

smp and timm (and the torchvision and torch._dynamo they pull in, seconds of start-up) are
imported where a network is built, so a process that only loads an exported artifact and applies
the label rules, as `ptxfast score` does, never imports them.

ImageNet initialization reads weights from disk only (Hugging Face / timm / smp caches, the torch
hub checkpoint folder, or a file the user names); nothing here touches the network.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ptxfast import CASCADES, CLASSIFIERS, MODEL_NAMES, SEGMENTERS

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The paper's label rules. Classifiers and cascades: an image is positive when its probability is
# above 0.5. Segmenters: a pixel is positive when p > 0.3, an image when more than 375 pixels (at
# 512², scaled by area) are.
CLASSIFIER_THRESHOLD = 0.5
PIXEL_THRESHOLD = 0.3
_MIN_AREA_AT_512 = 375

_TIMM_ARCH = {"rn34": "resnet34", "eb3": "efficientnet_b3"}
_SMP_ENCODER = {"rn34un": "resnet34", "eb3un": "efficientnet-b3"}


# ----------------------------------------------------------------------------- label rule


def min_area(size: int) -> int:
    """Pixels above PIXEL_THRESHOLD an image needs *more than* to be positive at size×size."""
    return max(1, round(_MIN_AREA_AT_512 * (size / 512) ** 2))


def score_k(size: int) -> int:
    """The k for `segmenter_score` that reproduces the min-area rule exactly at size×size.

    "More than A pixels have p > t" ⇔ "at least A+1 pixels do" ⇔ "the (A+1)-th largest pixel
    probability is > t". So k = min_area(size) + 1 (376 at 512²), and thresholding the score at
    PIXEL_THRESHOLD gives the paper's hard label while the score itself ranks images for ROC-AUC.
    """
    return min_area(size) + 1


def segmenter_score(prob: torch.Tensor, k: int) -> torch.Tensor:
    """Continuous image score of a mask probability map N×1×S×S: its k-th largest pixel, shape N."""
    return torch.topk(prob.flatten(1), k, dim=1).values[:, -1]


def segmenter_label(prob: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """The paper's hard image label (bool, shape N) from mask probabilities N×1×S×S."""
    area = min_area(size if size is not None else prob.shape[-1])
    return (prob > PIXEL_THRESHOLD).flatten(1).sum(1) > area


def label_threshold(kind: str) -> float:
    """The image probability above which a model of `kind` says positive: CLASSIFIER_THRESHOLD
    for classifiers and cascades; PIXEL_THRESHOLD on a segmenter's k-th largest pixel."""
    return PIXEL_THRESHOLD if kind == "segmenter" else CLASSIFIER_THRESHOLD


def thresholds(kind: str, size: int) -> dict[str, float | int | None]:
    """The whole label rule of a model of `kind` at size×size, as sidecars and predictors
    record it: the image threshold, and for models with a mask its pixel threshold and min
    area (segmenters: also the k of their image score)."""
    has_mask = kind != "classifier"
    return {
        "label": label_threshold(kind),
        "pixel": PIXEL_THRESHOLD if has_mask else None,
        "min_area": min_area(size) if has_mask else None,
        "score_k": score_k(size) if kind == "segmenter" else None,
    }


def kind_of(name: str) -> str:
    """ "classifier", "segmenter" or "cascade" for one of the eight model names."""
    for kind, names in (
        ("classifier", CLASSIFIERS),
        ("segmenter", SEGMENTERS),
        ("cascade", CASCADES),
    ):
        if name in names:
            return kind
    raise KeyError(_unknown(name))


def cascade_parts(name: str) -> tuple[str, str]:
    """("eb3un", "rn34") for "eb3un+rn34": the segmenter and classifier names of a cascade."""
    if name not in CASCADES:
        raise KeyError(f"{name!r} is not a cascade; cascades are {', '.join(CASCADES)}")
    seg, cls = name.split("+")
    return seg, cls


def _unknown(name: str) -> str:
    return f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}"


# ----------------------------------------------------------------------------- modules


class _Normalize(nn.Module):
    """Gray (or already 3-channel) [0, 1] images → ImageNet-normalized 3-channel input.

    `expand` repeats a single channel without copying and leaves a 3-channel input unchanged, so
    classifiers accept both the plain image and a cascade's [img, img, mask] with one code path.
    It computes in its buffers' dtype (the model's) and, after `normalise_in_float32`, in
    float32 before casting to `out_dtype`.
    """

    def __init__(self) -> None:
        super().__init__()
        # Non-persistent: constants of the architecture, not learned state; checkpoints stay clean.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.out_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.expand(-1, 3, -1, -1).to(self.mean.dtype) - self.mean) / self.std
        return x if self.out_dtype is None else x.to(self.out_dtype)


def normalise_in_float32(model: nn.Module) -> nn.Module:
    """Make the normalisers of `model` (cast to its inference dtype) compute in float32 with
    the exact ImageNet constants and hand the model's dtype on: a bf16 model then gets its
    image rounded once, after normalising, instead of the image, the constants, the
    difference and the quotient each rounded to bf16. A float32 model is unchanged."""
    for m in model.modules():
        if isinstance(m, _Normalize) and m.mean.dtype != torch.float32:
            m.out_dtype = m.mean.dtype
            m.mean = torch.tensor(IMAGENET_MEAN, device=m.mean.device).view(1, 3, 1, 1)
            m.std = torch.tensor(IMAGENET_STD, device=m.std.device).view(1, 3, 1, 1)
    return model


class _FrozenStatsMixin:
    """Keeps BatchNorm layers whose parameters are all frozen in eval mode during training.

    A frozen layer must compute what it did when loaded (with ImageNet statistics); left in train
    mode it would normalize by batch statistics and drift its running ones, weights frozen or not.
    """

    def train(self, mode: bool = True):  # type: ignore[override]
        super().train(mode)  # type: ignore[misc]
        if mode:
            for m in self.modules():  # type: ignore[attr-defined]
                params = list(m.parameters(recurse=False))
                if (
                    isinstance(m, nn.modules.batchnorm._BatchNorm)
                    and params
                    and not any(p.requires_grad for p in params)
                ):
                    m.eval()
        return self


class Classifier(_FrozenStatsMixin, nn.Module):
    """timm backbone with one logit. Input N×1×S×S (or N×3×S×S for cascades) in [0, 1] → N×1."""

    def __init__(self, arch: str) -> None:
        import timm

        super().__init__()
        self.normalize = _Normalize()
        self.net = timm.create_model(arch, pretrained=False, num_classes=1)
        # Start the one-logit head at zero: timm draws EfficientNet's fresh head from U(±1/√1),
        # which puts the first logits near ±10 over 1536 features and costs many epochs of
        # recovery. ImageNet weights never fill this head (1000 outputs), so it stays zero there.
        head = self.net.get_classifier()
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


class Segmenter(_FrozenStatsMixin, nn.Module):
    """smp U-Net. Input N×1×S×S in [0, 1] (S divisible by 32) → mask logits N×1×S×S."""

    def __init__(self, encoder: str) -> None:
        import segmentation_models_pytorch as smp

        super().__init__()
        self.normalize = _Normalize()
        self.net = smp.Unet(encoder_name=encoder, encoder_weights=None, classes=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


class Cascade(_FrozenStatsMixin, nn.Module):
    """Frozen segmenter → sigmoid mask → classifier on [img, img, mask] → image logit N×1."""

    def __init__(self, segmenter: Segmenter, classifier: Classifier) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.classifier = classifier
        self.segmenter.requires_grad_(False)
        self.segmenter.eval()

    def train(self, mode: bool = True) -> Cascade:
        super().train(mode)
        # The segmenter is a fixed feature extractor: no dropout / drop-connect, no BN updates.
        self.segmenter.eval()
        return self

    def forward_with_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image logits N×1, mask probability N×1×S×S)."""
        mask = torch.sigmoid(self.segmenter(x))
        logits = self.classifier(torch.cat([x, x, mask], dim=1))
        return logits, mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_mask(x)[0]


# ----------------------------------------------------------------------------- freezing


def _trainable_prefixes(name: str) -> tuple[str, ...] | None:
    """Parameter-name prefixes left trainable by the paper's policy; None means all of them."""
    if name == "rn34":
        return ("net.layer3.", "net.layer4.", "net.fc.")
    if name == "eb3":
        # torchvision's features[0:6] (stem + first five stages) = timm conv_stem, bn1, blocks[0:5].
        return ("net.blocks.5.", "net.blocks.6.", "net.conv_head.", "net.bn2.", "net.classifier.")
    return None


def apply_freezing(model: nn.Module, name: str) -> nn.Module:
    """Set requires_grad by the paper's policy (DESIGN.md) and return the model.

    Segmenters: all trainable. eb3: blocks 5–6 and the head. rn34: layer3, layer4, fc.
    Cascades: the segmenter frozen, the classifier by its own policy.
    """
    kind = kind_of(name)
    if kind == "cascade":
        seg, cls = cascade_parts(name)
        model.segmenter.requires_grad_(False)
        apply_freezing(model.classifier, cls)
        return model
    keep = _trainable_prefixes(name)
    for pname, p in model.named_parameters():
        p.requires_grad_(keep is None or pname.startswith(keep))
    return model


# ----------------------------------------------------------------------------- weights on disk


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (weights_only: no code runs on load)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # a ptxfast (or torchvision-reference) checkpoint
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict (name → tensor), got {type(obj).__name__}")
    return obj


def _load_matching(module: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Load the entries whose names and shapes match; return how many tensors were loaded.

    ImageNet heads (1000 classes) and torchvision's fc differ in shape or name from ours and are
    skipped; everything else must line up.
    """
    own = module.state_dict()
    common = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(common, strict=False)
    return len(common)


def _best_target(model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Load `state` into whichever of model / model.net / its encoder matches the most names."""
    targets = [model]
    net = getattr(model, "net", None)
    if net is not None:
        targets += [net] + ([net.encoder] if hasattr(net, "encoder") else [])
    scores = [sum(k in t.state_dict() for k in state) for t in targets]
    best = targets[max(range(len(targets)), key=scores.__getitem__)]
    return _load_matching(best, state)


def _hf_cached(
    repo_id: str, filenames: tuple[str, ...], revision: str | None = None
) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for rev in (revision, None) if revision else (None,):
        for fn in filenames:
            hit = try_to_load_from_cache(repo_id, fn, revision=rev)
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit)
    return None


def _hub_checkpoint(*names: str) -> list[Path]:
    return [Path(torch.hub.get_dir()) / "checkpoints" / n for n in names if n]


def _imagenet_candidates(name: str) -> tuple[list[Callable[[], Path | None]], list[str]]:
    """Lookups for `name`'s ImageNet weights (first hit wins) and a description of each place."""
    finders: list[Callable[[], Path | None]] = []
    places: list[str] = []

    def add_hf(repo: str, files: tuple[str, ...], revision: str | None = None) -> None:
        finders.append(partial(_hf_cached, repo, files, revision))
        places.append(f"Hugging Face cache {repo}")

    def add_file(path: Path) -> None:
        finders.append(lambda: path if path.is_file() else None)
        places.append(str(path))

    import segmentation_models_pytorch as smp
    import timm

    timm_files = ("model.safetensors", "pytorch_model.bin")
    if name in _TIMM_ARCH:
        cfg = timm.models.get_pretrained_cfg(_TIMM_ARCH[name])
        if cfg is not None and cfg.hf_hub_id:
            add_hf(cfg.hf_hub_id, timm_files)
        if cfg is not None and cfg.url:
            for p in _hub_checkpoint(cfg.url.rsplit("/", 1)[-1]):
                add_file(p)
    else:
        encoder = _SMP_ENCODER[name]
        settings = smp.encoders.encoders[encoder]["pretrained_settings"]["imagenet"]
        add_hf(settings["repo_id"], ("model.safetensors",), settings.get("revision"))
        if name == "rn34un":
            # smp's ResNet encoder is torchvision's ResNet: torchvision and timm weights fit it.
            for p in _hub_checkpoint("resnet34-b627a593.pth", "resnet34-333f7ec4.pth"):
                add_file(p)
            add_hf("timm/resnet34.a1_in1k", timm_files)
        else:
            for p in _hub_checkpoint("efficientnet-b3-5fb5a3c3.pth"):
                add_file(p)
    return finders, places


def imagenet_weights(name: str) -> Path | None:
    """The ImageNet weights file `build(name)` would load (first hit of the disk lookups), or
    None. For a cascade: its classifier's (the segmenter comes from training)."""
    if kind_of(name) == "cascade":
        name = cascade_parts(name)[1]
    for find in _imagenet_candidates(name)[0]:
        path = find()
        if path is not None:
            return path
    return None


def _init_weights(model: nn.Module, name: str, weights: str | Path | None) -> None:
    """ImageNet (from disk), a user file, or nothing; missing ImageNet weights warn once."""
    if weights is None:
        return
    if str(weights) != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist; pass a state dict file")
        if _best_target(model, _read_state_dict(path)) == 0:
            raise ValueError(f"{path}: no tensor in it matches {name}'s parameter names")
        return
    path = imagenet_weights(name)
    if path is not None and _best_target(model, _read_state_dict(path)) > 0:
        log.debug("%s: ImageNet weights from %s", name, path)
        return
    log.warning(
        "%s: no ImageNet weights on disk (looked in %s); starting from random init. "
        "Pass --weights PATH (a state dict) or put them in one of those places.",
        name,
        "; ".join(_imagenet_candidates(name)[1]),
    )


# ----------------------------------------------------------------------------- build


def _classifier(arch: str, name: str, weights: str | Path | None) -> Classifier:
    model = Classifier(arch)
    _init_weights(model, name, weights)
    return model


def _segmenter(encoder: str, name: str, weights: str | Path | None) -> Segmenter:
    model = Segmenter(encoder)
    _init_weights(model, name, weights)
    return model


def _cascade(
    name: str, weights: str | Path | None, segmenter_weights: str | Path | dict | None
) -> Cascade:
    seg_name, cls_name = cascade_parts(name)
    segmenter = _BUILDERS[seg_name](seg_name, None)
    if segmenter_weights is not None:
        state = (
            segmenter_weights
            if isinstance(segmenter_weights, dict)
            else _read_state_dict(Path(segmenter_weights))
        )
        # The segmenter must match exactly: a cascade on a half-loaded segmenter is meaningless.
        segmenter.load_state_dict(state, strict=True)
    classifier = _BUILDERS[cls_name](cls_name, weights)
    return Cascade(segmenter, classifier)


# The eight models by name. Cascades are built from the segmenter and classifier entries.
_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "rn34": partial(_classifier, "resnet34"),
    "eb3": partial(_classifier, "efficientnet_b3"),
    "rn34un": partial(_segmenter, "resnet34"),
    "eb3un": partial(_segmenter, "efficientnet-b3"),
    **{name: _cascade for name in CASCADES},
}
assert tuple(_BUILDERS) == MODEL_NAMES


def build(
    name: str,
    weights: str | Path | None = "imagenet",
    segmenter_weights: str | Path | dict | None = None,
) -> nn.Module:
    """Build one of the eight models by name, with the paper's freezing applied.

    weights: "imagenet" (from disk caches; random init and one warning when absent), None (random
    init), or a path to a state dict. For a cascade it initializes the classifier, and
    `segmenter_weights` (a checkpoint path or state dict of the trained segmenter) fills the
    frozen segmenter.
    """
    if name not in _BUILDERS:
        raise KeyError(_unknown(name))
    if kind_of(name) == "cascade":
        model = _cascade(name, weights, segmenter_weights)
    else:
        model = _BUILDERS[name](name, weights)
    return apply_freezing(model, name)
