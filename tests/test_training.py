"""Training: recipes, one optimizer step, evaluation, checkpoints, exact resume, DDP, the CLI."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from ptxfast import MODEL_NAMES
from ptxfast.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from ptxfast.models import build, min_area
from ptxfast.training import (
    Step,
    TrainConfig,
    TrainData,
    TrainError,
    build_for_training,
    evaluate,
    fit,
    load_recipe,
    mirror,
    soft_dice_loss,
    train_models,
    train_one_epoch,
    train_step,
    training_loss,
    with_overrides,
)

pytestmark = pytest.mark.usefixtures("one_thread")
S = 64


@pytest.fixture(autouse=True)
def _quiet_offline(offline):
    logging.getLogger("ptxfast.models").setLevel(logging.ERROR)  # no ImageNet files in CI
    yield
    logging.getLogger("ptxfast.models").setLevel(logging.NOTSET)


def _items(n: int, seed: int) -> TensorDataset:
    """n images at S², every second one with a bright rectangle (its mask) that marks it positive."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % 2).float()
    mask = torch.zeros(n, 1, S, S)
    mask[y == 1, :, 16:40, 8:30] = 1
    x = torch.rand(n, 1, S, S, generator=g) * 0.5 + 0.4 * mask
    return TensorDataset(x, mask, y)


class _Noisy(Dataset):
    """Adds noise from the *global* torch RNG, so resuming must restore RNG state to match."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, m, y = self.base[i]
        return (x + 0.01 * torch.rand_like(x)).clamp(0, 1), m, y


def _data(n_train: int = 8) -> TrainData:
    blocks = [_items(n_train, 10 + b) for b in range(3)]  # stands in for negative rotation
    return TrainData(
        train=lambda e: _Noisy(blocks[(e // 2) % 3]), val=_items(6, 1), test=_items(6, 2)
    )


def _cfg(tmp_path, arch: str = "rn34", **kw) -> TrainConfig:
    base = dict(
        arch=arch,
        runs=str(tmp_path / "runs"),
        size=S,
        epochs=1,
        batch_size=2,
        weights="none",
        device="cpu",
        rotate_every=2,
    )
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("recipe", ["paper", "quick"])
def test_recipes_load_for_all_eight(recipe):
    for name in MODEL_NAMES:
        cfg = load_recipe(recipe, name)
        assert cfg.arch == name and cfg.loss in ("bce", "bce+dice") and cfg.optimizer == "adam"
        assert cfg.rotate_every > 0 and cfg.select == "f1"
        if recipe == "paper":  # plain BCE, each model's own BatchNorm, torch's threads
            assert (cfg.loss, cfg.bn_momentum, cfg.threads) == ("bce", 0, 0)
    paper = load_recipe("paper", "eb3")
    assert (paper.lr, paper.batch_size, paper.epochs, paper.size) == (1e-4, 4, 20, 512)
    assert paper.weights == "imagenet" and paper.rotate_every == 4


def test_recipe_file_sections_and_errors(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[defaults]\nepochs = 3\nlr = 1\n[models."eb3un+eb3"]\nepochs = 5\n')
    assert load_recipe(path, "eb3").epochs == 3
    cfg = load_recipe(path, "eb3un+eb3")
    assert cfg.epochs == 5 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    path.write_text("[defaults]\nepoch = 3\n")
    with pytest.raises(TrainError, match="unknown setting 'epoch'"):
        load_recipe(path, "eb3")
    path.write_text("[defaults]\nsize = 100\n")
    with pytest.raises(TrainError, match="multiple of 32"):
        load_recipe(path, "eb3")
    path.write_text('[defaults]\nepochs = "many"\n')
    with pytest.raises(TrainError, match="should be a int"):
        load_recipe(path, "eb3")
    with pytest.raises(TrainError, match="not found"):
        load_recipe("fastest", "eb3")
    over = with_overrides(load_recipe("paper", "rn34"), epochs=2, lr=None, size=64)
    assert (over.epochs, over.lr, over.size) == (2, 1e-4, 64)


# ---------------------------------------------------------------------------------------- loop


@pytest.mark.parametrize("arch", ["rn34", "eb3", "rn34un", "rn34un+rn34"])
def test_one_step_lowers_the_loss(arch):
    torch.manual_seed(0)
    model = build(arch, weights=None)
    x, m, y = _items(2, 0).tensors
    step = Step(
        "segmenter" if arch == "rn34un" else "classifier", torch.device("cpu")
    )  # a cascade steps like a classifier: image in, image logit out

    def loss() -> float:
        model.train()  # batch statistics, as in the step itself
        with torch.no_grad():
            logits, target, _ = step(model, (x, m, y))
            return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, target))

    before = loss()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    stats = train_one_epoch(model, [(x, m, y)], opt, step)
    assert stats["images"] == 2 and stats["loss"] == pytest.approx(before, rel=1e-4)
    assert loss() < before
    for n, p in model.named_parameters():  # the frozen part did not move
        if n in frozen:
            assert torch.equal(p, frozen[n])


def test_training_loss_bce_dice():
    target = torch.zeros(2, 1, S, S)
    target[0, :, 10:20, 10:30] = 1
    good = (target * 2 - 1) * 8.0  # confident and right everywhere
    empty = torch.full_like(target, -10.0)  # "no pneumothorax anywhere"
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert float(soft_dice_loss(good, target)) < 0.01
    # The collapse plain BCE settles on costs little BCE (few foreground pixels) but full Dice.
    assert float(bce(empty, target)) < 0.3 and float(soft_dice_loss(empty, target)) > 0.95
    seg = training_loss(empty, target, "segmenter", "bce+dice")
    torch.testing.assert_close(seg, bce(empty, target) + soft_dice_loss(empty, target))
    torch.testing.assert_close(training_loss(empty, target, "segmenter"), bce(empty, target))
    # Image-level models keep BCE under "bce+dice": Dice of one label per image means nothing.
    logits, labels = torch.tensor([[2.0], [-1.0]]), torch.tensor([[1.0], [0.0]])
    torch.testing.assert_close(
        training_loss(logits, labels, "classifier", "bce+dice"), bce(logits, labels)
    )
    # A batch of negatives alone: any predicted area costs Dice, none costs (almost) nothing.
    neg, none = torch.zeros(2, 1, S, S), torch.full((2, 1, S, S), -20.0)
    assert float(soft_dice_loss(none, neg)) < 0.01 and float(soft_dice_loss(good, neg)) > 0.9


def test_train_step_uses_the_recipe_loss():
    """The step minimises Step.loss: a bce+dice segmenter step reports BCE + Dice, then lowers it."""
    torch.manual_seed(0)
    model = build("rn34un", weights=None)
    x, m, y = _items(2, 0).tensors
    step = Step("segmenter", torch.device("cpu"), loss="bce+dice")
    model.train()  # batch statistics, as in the step itself
    with torch.no_grad():
        logits = model(x)
    expected = float(training_loss(logits, m, "segmenter", "bce+dice"))
    bce = float(torch.nn.functional.binary_cross_entropy_with_logits(logits, m))
    assert expected > bce + 0.3  # the Dice term is there (nothing is segmented yet)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss, n = train_step(model, (x, m, y), opt, step)
    assert n == 2 and float(loss) == pytest.approx(expected, rel=1e-4)
    for _ in range(3):
        after, _ = train_step(model, (x, m, y), opt, step)
    assert float(after) < expected


def test_bn_momentum_and_threads_settings(tmp_path, monkeypatch):
    default = build_for_training(_cfg(tmp_path, "eb3un"))[0]
    momenta = {m.momentum for m in default.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert min(momenta) < 0.05  # the efficientnet-b3 encoder's own slow average
    cfg = _cfg(tmp_path, "eb3un", bn_momentum=0.1)
    model = build_for_training(cfg)[0]
    assert {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}
    with pytest.raises(TrainError, match="bn_momentum"):
        _cfg(tmp_path, bn_momentum=1.5)
    with pytest.raises(TrainError, match="loss"):
        _cfg(tmp_path, loss="dice")
    import ptxfast.training.loop as training

    before, seen = torch.get_num_threads(), []
    real = training.train_one_epoch

    def spy(*args, **kwargs):  # the threads the epoch ran with
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", spy)
    want = 2 if before == 1 else 1
    fit(_cfg(tmp_path, threads=want), _data())
    assert seen == [want] and torch.get_num_threads() == before  # restored after the run


class _FixedMasks(torch.nn.Module):
    """A 'segmenter' returning given logits, to check the evaluation's labelling rule."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.i = 0

    def forward(self, x):
        out = self.logits[self.i : self.i + len(x)]
        self.i += len(x)
        return out


def test_segmenter_evaluation_uses_the_area_rule():
    area = min_area(S)  # 6 at 64²
    counts = [0, area, area + 1, 40]  # pixels above 0.3 per image
    logits = torch.full((4, 1, S, S), -5.0)
    for i, c in enumerate(counts):
        logits[i].view(-1)[:c] = 2.0
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0])
    masks = torch.zeros(4, 1, S, S)
    masks[1].view(-1)[: area + 1] = 1  # image 1: truth larger than the prediction
    masks[2].view(-1)[: area + 1] = 1  # image 2: exact
    data = TensorDataset(torch.zeros(4, 1, S, S), masks, labels)
    loader = torch.utils.data.DataLoader(data, batch_size=3)
    out = evaluate(_FixedMasks(logits), loader, Step("segmenter", torch.device("cpu")))
    # predicted labels: [0, 0, 1, 1] against truth [0, 1, 1, 0]
    assert out["recall"] == 0.5 and out["precision"] == 0.5 and out["f1"] == 0.5
    assert out["n"] == 4 and out["auc"] == pytest.approx(0.5)
    dice_1 = 2 * area / (area + area + 1)
    assert out["dice"] == pytest.approx((dice_1 + 1.0) / 2)


# --------------------------------------------------------------------------------- checkpoints


def test_fit_writes_checkpoints_that_rebuild_the_model(tmp_path):
    cfg = _cfg(tmp_path, epochs=2)
    result = fit(cfg, _data())
    run = cfg.run_dir
    for name in ("last.pt", "best.pt", "summary.csv", "recipe.toml", "result.json"):
        assert (run / name).is_file()
    state = load_checkpoint(run / "last.pt")
    assert {"model", "optimizer", "epoch", "metric", "model_args", "recipe", "version"} <= set(
        state
    )
    assert {"scaler", "rng", "best_metric", "history"} <= set(state)
    assert state["epoch"] == 2 and state["model_args"]["name"] == "rn34"
    model, loaded = model_from_checkpoint(run / "last.pt")
    assert not model.training
    for k, v in state["model"].items():
        assert torch.equal(model.state_dict()[k], v)
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == result["best_epoch"] and result["test"]["n"] == 6
    lines = (run / "summary.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch,train_loss")
    assert load_recipe(run / "recipe.toml", "rn34") == cfg  # the resolved recipe reads back
    assert not list(run.glob(".*tmp"))  # atomic writes leave no temporaries


class _Payload:
    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # runs on unpickling: creates the marker file


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "model_args": {"name": "rn34"}, "x": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        model_from_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    whole = _cfg(tmp_path / "a", epochs=3)
    fit(whole, _data())
    cut = _cfg(tmp_path / "b", epochs=1)  # "killed" after epoch 1 (last.pt written)
    fit(cut, _data())
    resumed = fit(dataclasses.replace(cut, epochs=3), _data(), resume=True)
    a = load_checkpoint(whole.run_dir / "last.pt")
    b = load_checkpoint(cut.run_dir / "last.pt")
    assert b["epoch"] == 3 and resumed["best_epoch"] == a["best_epoch"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    for pa, pb in zip(opt_a.values(), opt_b.values(), strict=True):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"])
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    with pytest.raises(TrainError, match="different recipe"):
        fit(dataclasses.replace(cut, epochs=4, lr=1e-3), _data(), resume=True)


def test_cascade_needs_its_trained_segmenter(tmp_path):
    with pytest.raises(TrainError, match="ptxfast train --arch eb3un"):
        fit(_cfg(tmp_path, "eb3un+rn34"), _data())


def test_cascade_trains_on_a_frozen_segmenter(tmp_path):
    seg_cfg = _cfg(tmp_path, "rn34un")
    fit(seg_cfg, _data())
    seg = load_checkpoint(seg_cfg.run_dir / "best.pt")["model"]
    result = fit(_cfg(tmp_path, "rn34un+rn34"), _data())
    assert len(result["segmenter_sha256"]) == 64
    state = load_checkpoint(tmp_path / "runs" / "rn34un+rn34" / "last.pt")
    for k, v in seg.items():  # the segmenter inside the cascade is the trained one, untouched
        assert torch.equal(state["model"][f"segmenter.{k}"], v)
    assert state["recipe"]["segmenter_sha256"] == result["segmenter_sha256"]


# ---------------------------------------------------------------------------------------- DDP


def _flat(parameters) -> torch.Tensor:
    """The parameters as one vector in their logical order (training keeps them channels_last,
    which `parameters_to_vector`'s view cannot flatten)."""
    return torch.cat([p.detach().reshape(-1) for p in parameters])


def _ddp_worker(rank: int, world: int, port: int, cfg: TrainConfig, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    logging.getLogger("ptxfast.models").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    import ptxfast.training.loop as training

    real = training.train_one_epoch

    def spy(module, *args, **kwargs):  # each rank's own weights after its epoch
        stats = real(module, *args, **kwargs)
        torch.save(_flat(module.parameters()), f"{out}/rank{rank}.pt")
        return stats

    training.train_one_epoch = spy
    try:
        fit(cfg, _data())
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes(tmp_path):
    import torch.multiprocessing as mp

    cfg = _cfg(tmp_path, "rn34")
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    state = load_checkpoint(cfg.run_dir / "last.pt")
    # The two ranks split the 8 training images: 2 steps of 2 each, 8 images in all.
    assert state["history"][0]["train_images"] == 8
    # Different shards, same weights after the step: the gradients were averaged across ranks.
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(rank0, rank1)
    saved = _flat(model_from_checkpoint(cfg.run_dir / "last.pt")[0].parameters())
    assert torch.equal(saved, rank0)
    assert not list(cfg.run_dir.glob(".*tmp"))


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "model_args": {"name": "rn34"}}, path)

    def broken(obj, f, *a, **k):
        open(f, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        save_checkpoint({"model": {"w": torch.zeros(2)}, "model_args": {}}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ---------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from ptxfast.data.synth import write_dataset

    out = tmp_path_factory.mktemp("phantoms")
    write_dataset(out, n=24, seed=0, size=256, positive_rate=0.4)
    return out


def test_cli_trains_on_phantoms_and_resumes(phantoms, tmp_path):
    from click.testing import CliRunner

    from ptxfast.cli import cli

    runs = tmp_path / "runs"
    args = ["train", "--arch", "rn34", "--recipe", "quick", "--data", str(phantoms)]
    args += ["--runs", str(runs), "--batch-size", "4", "--weights", "none"]
    result = CliRunner().invoke(cli, [*args, "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "rn34" in result.output and "test F1" in result.output
    state = load_checkpoint(runs / "rn34" / "last.pt")
    assert state["epoch"] == 1 and state["recipe"]["cache_images"] is True
    assert state["recipe"]["size"] == load_recipe("quick", "rn34").size
    # Resuming a finished run with more epochs continues at epoch 2.
    result = CliRunner().invoke(cli, [*args, "--epochs", "2", "--resume"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(runs / "rn34" / "last.pt")["epoch"] == 2


def test_cli_errors_name_the_fix(phantoms, tmp_path):
    from click.testing import CliRunner

    from ptxfast.cli import cli

    args = ["train", "--arch", "eb3un+eb3", "--data", str(phantoms), "--runs", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert "ptxfast train --arch eb3un" in result.output
    result = CliRunner().invoke(cli, ["train", "--arch", "vgg16", "--data", str(phantoms)])
    assert result.exit_code != 0 and "rn34un+rn34" in result.output
    result = CliRunner().invoke(cli, ["train", "--arch", "all", "--recipe", "fast"])
    assert result.exit_code != 0 and "quick" in result.output


# ---------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_cuda_amp_channels_last_fit_and_resume(tmp_path, amp):
    cfg = _cfg(tmp_path, "eb3un+eb3", device="cuda", amp=amp, epochs=1)
    fit(_cfg(tmp_path, "eb3un", device="cuda", amp=amp), _data())
    fit(cfg, _data())
    state = load_checkpoint(cfg.run_dir / "last.pt")
    assert bool(state["scaler"]) == (amp == "fp16")  # GradScaler only for fp16
    assert all(v.device.type == "cpu" for v in state["model"].values())  # map_location cpu
    result = fit(dataclasses.replace(cfg, epochs=2), _data(), resume=True)
    assert load_checkpoint(cfg.run_dir / "last.pt")["epoch"] == 2
    assert 0.0 <= result["test"]["f1"] <= 1.0 and result["test"]["n"] == 6
    model, _ = model_from_checkpoint(cfg.run_dir / "last.pt")
    assert torch.isfinite(model(torch.rand(2, 1, S, S))).all()


def test_mirror_flips_image_and_mask_together() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    mask = (torch.rand(64, 1, 8, 8) > 0.5).float()
    y = torch.arange(64.0)
    assert all(
        torch.equal(a, b) for a, b in zip(mirror((x, mask, y), 0.0), (x, mask, y), strict=True)
    )
    xs, ms, ys = mirror((x, mask, y), 1.0)
    assert torch.equal(xs, x.flip(-1)) and torch.equal(ms, mask.flip(-1)) and torch.equal(ys, y)
    xs, ms, _ = mirror((x, mask, y), 0.5)
    flipped = [bool(torch.equal(xs[i], x[i].flip(-1))) for i in range(64)]
    kept = [bool(torch.equal(xs[i], x[i])) for i in range(64)]
    assert all(
        f != k for f, k in zip(flipped, kept, strict=True)
    )  # each image either mirrored or as it was
    assert 10 < sum(flipped) < 54
    for i in range(64):  # its mask went the same way
        assert torch.equal(ms[i], mask[i].flip(-1) if flipped[i] else mask[i])
    # Classifier batches carry an empty mask slot; it stays empty.
    xs, ms, _ = mirror((x, torch.empty(0), y), 1.0)
    assert torch.equal(xs, x.flip(-1)) and ms.numel() == 0
    # The draws come from torch's generator, so a restored RNG state repeats them.
    torch.manual_seed(3)
    first = mirror((x, mask, y), 0.5)[0]
    torch.manual_seed(3)
    assert torch.equal(mirror((x, mask, y), 0.5)[0], first)


def test_hflip_must_be_a_probability() -> None:
    with pytest.raises(TrainError, match="hflip"):
        TrainConfig(arch="rn34", hflip=1.5)


def test_model_names_orders_segmenters_before_their_cascades():
    from ptxfast.training.loop import model_names

    assert model_names("eb3un+eb3, eb3un") == ("eb3un", "eb3un+eb3")
    assert model_names("rn34") == ("rn34",)
    assert model_names("all") == MODEL_NAMES
    for bad in ("eb3un,vgg16", "", ","):
        with pytest.raises(TrainError, match="unknown model"):
            model_names(bad)
    with pytest.raises(TrainError, match="fits one architecture"):
        train_models("eb3un,eb3un+eb3", "quick", weights="w.pt")
