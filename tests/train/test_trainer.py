"""The generic trainer, on the toy model and data (no images, no LightGlue)."""

from __future__ import annotations

import csv
import hashlib
import math
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import default_collate

import featmatch_core.files as files_module
from featmatch_core.config import ConfigError
from featmatch_core.train import checkpoints as ckpt
from featmatch_core.train import distributed
from featmatch_core.train.__main__ import main
from featmatch_core.train.schedule import LRSchedule, check_schedule_conf, lr_factor
from featmatch_core.train.toy import ToyRegression
from featmatch_core.train.trainer import TRAIN_DEFAULTS, NonFiniteLossError, Trainer, validate_config


def toy_conf(*dotlist: str) -> dict:
    base = {
        "model": {"name": "toy", "dim": 8, "hidden": 16},
        "data": {"name": "toy", "size": 64, "val_size": 16, "dim": 8},
        "train": {"epochs": 1, "batch_size": 8, "lr": 0.01, "log_every_iter": 1, "save_every_iter": 1000},
    }
    conf = OmegaConf.merge(OmegaConf.create(base), OmegaConf.from_dotlist(list(dotlist)))
    return OmegaConf.to_container(conf)


def read_metrics(path: Path, split: str, key: str) -> dict:
    with open(path, newline="") as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f)
                if r["split"] == split and r["key"] == key}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.glob(".*.tmp"))


# ---- training ----------------------------------------------------------------------------
@pytest.mark.parametrize("precision", [None, "bf16"])
def test_toy_model_trains_and_writes_outputs(tmp_path, precision):
    conf = toy_conf("train.epochs=4", "train.lr=0.02", "train.log_every_iter=4", "train.eval_every_iter=5")
    conf["train"]["mixed_precision"] = precision
    exp = tmp_path / "exp"
    trainer = Trainer(conf, exp)
    trainer.setup()
    before = trainer.evaluate(trainer.val_loader)["loss/total"]
    summary = trainer.fit()
    after = trainer.last_results["loss/total"]
    assert after < 0.3 * before, (before, after)
    assert summary["steps"] == 32 and summary["samples_per_s"] > 0
    if trainer.device.type == "cpu":
        assert summary["gpu_busy_percent"] is None
    expected_hours = trainer.tconf.epochs * len(trainer.train_set) / summary["samples_per_s"] / 3600
    assert math.isclose(summary["configured_run_hours"], expected_hours, rel_tol=1e-6)
    assert math.isclose(summary["best"], min(read_metrics(exp / "metrics.csv", "val", "loss/total").values()))
    for name in ("config.yaml", "checkpoint_last.tar", "checkpoint_best.tar", "metrics.csv"):
        assert (exp / name).is_file(), name
    assert len(list(exp.glob("events.out.tfevents.*"))) == 1
    assert read_metrics(exp / "metrics.csv", "train", "samples_per_s")
    val_steps = sorted(read_metrics(exp / "metrics.csv", "val", "loss/total"))
    assert val_steps == [5, 8, 10, 15, 16, 20, 24, 25, 30, 32]  # every 5 steps and at each epoch end
    last = ckpt.load_checkpoint(exp / "checkpoint_last.tar")  # weights_only=True load
    assert (last["step"], last["epoch"], last["epoch_step"]) == (32, 4, 0)
    assert set(last) >= {"model", "optimizer", "scheduler", "scaler", "rng", "conf", "best"}
    assert OmegaConf.load(exp / "config.yaml").train.mixed_precision == precision


def test_grad_checkpointing_flag_reaches_the_model(tmp_path):
    trainer = Trainer(toy_conf("train.grad_checkpointing=true"), tmp_path / "exp")
    trainer.setup()
    assert trainer.model.gradient_checkpointing
    batch = next(trainer.epoch_batches(0, 0))
    out = trainer.train_step(batch)
    assert math.isfinite(out["loss/total"]) and trainer.step == 1


# ---- checkpoints -----------------------------------------------------------------------------
class _HalfWriter:
    """A file whose write() stores half of the data, then 'crashes'."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError("simulated crash in the middle of the write")


@pytest.mark.parametrize("crash_at", ["write", "fsync", "replace"])
def test_checkpoint_write_is_atomic(tmp_path, monkeypatch, crash_at):
    exp = tmp_path / "exp"
    trainer = Trainer(toy_conf(), exp)
    trainer.fit()
    path = exp / "checkpoint_last.tar"
    digest, step = sha(path), ckpt.load_checkpoint(path)["step"]
    with torch.no_grad():  # make the next checkpoint differ
        for p in trainer.model.parameters():
            p.add_(1.0)
    trainer.step += 1

    def crash(*args, **kwargs):
        raise OSError(f"simulated crash at {crash_at}")

    real_fdopen = os.fdopen
    if crash_at == "write":
        monkeypatch.setattr(files_module.os, "fdopen", lambda fd, mode: _HalfWriter(real_fdopen(fd, mode)))
    else:
        monkeypatch.setattr(files_module.os, crash_at, crash)
    with pytest.raises(OSError, match="simulated crash"):
        trainer.save_checkpoint()
    monkeypatch.undo()
    assert sha(path) == digest
    assert ckpt.load_checkpoint(path)["step"] == step
    assert leftovers(exp) == []


def test_non_finite_weights_are_never_saved(tmp_path):
    exp = tmp_path / "exp"
    trainer = Trainer(toy_conf(), exp)
    trainer.fit()
    digest = sha(exp / "checkpoint_last.tar")
    with torch.no_grad():
        next(trainer.model.parameters())[0] = float("nan")
    with pytest.raises(ckpt.CheckpointError, match="NaN"):
        trainer.save_checkpoint()
    assert sha(exp / "checkpoint_last.tar") == digest


class _RecordingTrainer(Trainer):
    def save_checkpoint(self, name=ckpt.LAST):
        path = super().save_checkpoint(name)
        self.saved_digest = sha(path)
        return path


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    exp = tmp_path / "exp"
    conf = toy_conf("model.nan_at_step=6", "train.save_every_iter=2", "train.epochs=2")
    trainer = _RecordingTrainer(conf, exp)
    expected = r"non-finite loss at step 6 .*checkpoint_last.tar \(step 4\)"
    with pytest.raises(NonFiniteLossError, match=expected):
        trainer.fit()
    last = exp / "checkpoint_last.tar"
    assert sha(last) == trainer.saved_digest
    state = ckpt.load_checkpoint(last)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    # the command line reports it and exits with an error
    monkeypatch.chdir(tmp_path)
    rc = main(["nan", "model.name=toy", "data.name=toy", "model.nan_at_step=3", "train.save_every_iter=1"])
    assert rc == 1
    assert "non-finite loss at step 3" in capsys.readouterr().err
    assert ckpt.load_checkpoint(tmp_path / "outputs/training/nan/checkpoint_last.tar")["step"] == 2


RESUME_RECIPE = """
model: {name: toy, hidden: 16, dropout: 0.2}
data: {name: toy, size: 48, val_size: 16, augment_noise: 0.1}
train:
  epochs: 3
  batch_size: 8
  optimizer: adamw
  weight_decay: 0.01
  lr: 0.01
  lr_schedule: {type: exp, start: 5, exp_div_10: 10, warmup: 3}
  clip_grad: 1.0
  log_every_iter: 1
  eval_every_iter: 4
  save_every_iter: 5
  seed: 7
"""


@pytest.mark.parametrize("resume_skip, workers, stop_at",
                         [("replay", 0, 8), ("replay", 1, 8), ("auto", 0, 6), ("sampler", 0, 3)])
def test_restore_continues_exactly(tmp_path, monkeypatch, resume_skip, workers, stop_at):
    """Stop after `stop_at` steps, restore, finish: same losses and weights as one run.

    Dropout and input noise consume the RNGs (the noise in a DataLoader worker with workers=1),
    the stop points are mid-epoch (3, 8) or at an epoch end (6; 6 steps per epoch)."""
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RESUME_RECIPE)
    skip = f"train.resume_skip={resume_skip} train.num_workers={workers}".split()
    assert main(["full", "--conf", str(recipe), *skip]) == 0
    assert main(["part", "--conf", str(recipe), *skip, f"train.max_steps={stop_at}"]) == 0
    root = tmp_path / "outputs/training"
    assert ckpt.load_checkpoint(root / "part/checkpoint_last.tar")["step"] == stop_at
    (root / "part/.checkpoint_last.tar.killed.tmp").write_bytes(b"half")  # a write killed earlier
    assert main(["part", "--restore", "train.max_steps=null"]) == 0
    assert leftovers(root / "part") == []

    full = read_metrics(root / "full/metrics.csv", "train", "loss/total")
    part = read_metrics(root / "part/metrics.csv", "train", "loss/total")
    assert sorted(full) == sorted(part) == list(range(1, 19))
    assert part[stop_at + 1] == full[stop_at + 1]  # the next-step loss, bit for bit
    assert part == full
    a = ckpt.load_checkpoint(root / "full/checkpoint_last.tar")
    b = ckpt.load_checkpoint(root / "part/checkpoint_last.tar")
    assert a["step"] == b["step"] == 18
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_restore_from_a_best_checkpoint_newer_than_the_last(tmp_path, monkeypatch):
    """Killed after a validation improved but before checkpoint_last was written."""
    monkeypatch.chdir(tmp_path)
    common = ["model.name=toy", "data.name=toy", "train.lr=0.01", "train.eval_every_iter=3"]
    assert main(["full", *common, "train.epochs=3"]) == 0
    assert main(["part", *common, "train.epochs=2"]) == 0
    part = tmp_path / "outputs/training/part"
    assert ckpt.load_checkpoint(part / "checkpoint_best.tar")["step"] == 16  # the epoch end
    (part / "checkpoint_last.tar").unlink()
    assert main(["part", "--restore", "train.epochs=3"]) == 0
    a = ckpt.load_checkpoint(tmp_path / "outputs/training/full/checkpoint_last.tar")
    b = ckpt.load_checkpoint(part / "checkpoint_last.tar")
    assert a["step"] == b["step"] == 24
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_restore_needs_a_checkpoint_and_new_runs_do_not_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["x", "--restore"]) == 2
    assert main(["x", "model.name=toy", "data.name=toy"]) == 0
    assert main(["x", "model.name=toy", "data.name=toy"]) == 2
    assert "--restore" in capsys.readouterr().err
    assert main(["x", "--restore"]) == 0  # already at its end: nothing to do


# ---- configuration errors ----------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["model.name=nope", "data.name=toy"], "unknown model name 'nope'"),
    (["model.name=toy", "data.name=nope"], "unknown data name 'nope'"),
    (["data.name=toy"], "'model' config needs a 'name'"),
    (["model.name=toy", "data.name=toy", "train.epochz=2"], "unknown config key 'train.epochz'"),
    (["model.name=toy", "data.name=toy", "train.lr_schedule.tpye=exp"], "train.lr_schedule.tpye"),
    (["model.name=toy", "data.name=toy", "trian.lr=1"], "unknown config key 'trian'"),
    (["model.name=toy", "data.name=toy", "train.epochs=many"], "'train.epochs' expects int"),
    (["model.name=toy", "data.name=toy", "train.optimizer=lion"], "train.optimizer"),
    pytest.param(["model.name=toy", "data.name=toy", "train.mixed_precision=fp16"], "needs CUDA",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid where CUDA exists")),
    (["model.name=toy", "data.name=toy", "train.lr_schedule.type=exp"], "exp_div_10"),
    (["model.name=toy", "data.name=toy", "train.run_benchmarks=[nowhere.mod:fn]"], "cannot import"),
])
def test_config_errors_before_any_work(tmp_path, monkeypatch, capsys, overrides, message):
    monkeypatch.chdir(tmp_path)
    assert main(["bad"] + overrides) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("overrides, error, message", [
    (["model.hiden=3"], ConfigError, "model.hiden|hiden"),
    (["data.root=/nonexistent/images"], FileNotFoundError, "/nonexistent/images"),
    (["train.best_key=loss/nope"], ConfigError, "best_key 'loss/nope'"),
    (["train.batch_size=128"], ConfigError, "smaller than one batch"),
])
def test_model_and_data_errors_before_training(tmp_path, overrides, error, message):
    exp = tmp_path / "exp"
    trainer = Trainer(toy_conf(*overrides), exp)
    with pytest.raises(error, match=message):
        trainer.fit()
    assert trainer.step == 0
    assert not (exp / "checkpoint_last.tar").exists() and not (exp / "metrics.csv").exists()


def test_validate_config_fills_defaults():
    conf = validate_config(toy_conf())
    assert set(conf) == {"data", "model", "train"}
    assert set(conf.train) == set(TRAIN_DEFAULTS)
    assert conf.train.best_key == "loss/total" and conf.train.lr == 0.01


# ---- learning-rate schedule ------------------------------------------------------------------
def _schedule(**kwargs):
    conf = dict(TRAIN_DEFAULTS["lr_schedule"], **kwargs)
    check_schedule_conf(conf)
    return conf


def test_lr_schedule_values():
    paper = _schedule(type="exp", start=20, exp_div_10=10, on_epoch=True)  # LightGlue homography recipe
    assert lr_factor(paper, step=12345, epoch=19) == 1.0
    assert lr_factor(paper, 0, 20) == pytest.approx(10 ** -0.1)  # about 0.8 per epoch
    assert lr_factor(paper, 0, 29) == pytest.approx(0.1)
    assert lr_factor(paper, 0, 39) == pytest.approx(0.01)
    assert lr_factor(_schedule(), 10**6, 10**3) == 1.0
    warm = _schedule(type="exp", start=10, exp_div_10=5, warmup=4)
    assert [lr_factor(warm, s, 0) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(warm, 9, 0) == 1.0 and lr_factor(warm, 14, 0) == pytest.approx(0.1)
    step = _schedule(type="step", start=3, factor=0.5, step_size=2)
    assert [lr_factor(step, s, 0) for s in range(8)] == [1, 1, 1, 0.5, 0.5, 0.25, 0.25, 0.125]
    for bad in ({"type": "cosine"}, {"type": "exp"}, {"type": "step", "step_size": 0}):
        with pytest.raises(ConfigError):
            _schedule(**bad)


@pytest.mark.parametrize("start", [0, 1, 3])
def test_exp_schedule_matches_glue_factory(start):
    """Glue Factory steps a MultiplicativeLR after each iteration with this lr_fn."""
    div = 5
    gam = 10 ** (-1 / div)
    param = torch.nn.Parameter(torch.zeros(1))
    ref_opt = torch.optim.SGD([param], lr=0.1)
    ref = torch.optim.lr_scheduler.MultiplicativeLR(ref_opt, lambda it: 1.0 if it < start else gam)
    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ours = LRSchedule(ours_opt, _schedule(type="exp", start=start, exp_div_10=div))
    for it in range(20):
        assert ours.apply(it, 0) == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12), it
        ref_opt.step()
        ref.step()


# ---- initial weights and benchmarks -----------------------------------------------------------
def test_load_experiment_and_benchmark_hook(tmp_path):
    first = tmp_path / "first"
    Trainer(toy_conf(), first).fit()
    conf = toy_conf("train.load_experiment=first",
                    "train.run_benchmarks=[featmatch_core.train.toy:benchmark]")
    second = Trainer(conf, tmp_path / "second", run_benchmarks=True)
    second.setup()
    best = ckpt.load_checkpoint(first / "checkpoint_best.tar")["model"]
    for key, value in second.model.state_dict().items():
        assert torch.equal(value.cpu(), best[key]), key
    assert second.step == 0 and second.optimizer.state_dict()["state"] == {}
    second.fit()
    norms = read_metrics(tmp_path / "second/metrics.csv", "benchmark", "toy.benchmark/weight_norm")
    assert list(norms) == [8] and norms[8] > 0
    with pytest.raises(ckpt.CheckpointError, match="load_experiment='missing'"):
        Trainer(toy_conf("train.load_experiment=missing"), tmp_path / "third")


# ---- distributed (gloo on CPU) ----------------------------------------------------------------
def test_two_process_gloo_run_trains_and_averages_gradients(tmp_path, monkeypatch):
    """2 processes x 4 samples must follow the 1 process x 8 samples run: DistributedSampler
    shards the same permutation, so the mean of the two per-process gradients is the gradient
    of the global batch, and SGD then gives the same weights."""
    monkeypatch.chdir(tmp_path)
    # on the CPU also where CUDA exists: one gloo process per core pair, not one per GPU
    overrides = ["model.name=toy", "data.name=toy", "model.hidden=0", "train.optimizer=sgd", "train.lr=0.05",
                 "train.epochs=2", "train.batch_size=8", "train.log_every_iter=1", "train.device=cpu"]
    conf = toy_conf(*overrides)
    reference = Trainer(conf, tmp_path / "single")
    reference.setup()
    initial = {k: v.clone() for k, v in reference.model.state_dict().items()}
    # gradients of the first step on each process's shard, computed here
    grads = []
    for rank in (0, 1):
        sampler = distributed.ResumableSampler(reference.train_set, 2, rank, seed=reference.tconf.seed)
        sampler.set_epoch(0)
        batch = default_collate([reference.train_set[i] for i in list(sampler)[:4]])
        model = ToyRegression(conf["model"])
        model.load_state_dict(initial)
        model.loss(model(batch), batch)[0]["total"].mean().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert not torch.allclose(grads[0], grads[1])
    initial_val = reference.evaluate(reference.val_loader)["loss/total"]
    reference.fit()

    assert main(["ddp", *overrides, "--distributed"]) == 0
    exp = tmp_path / "outputs/training/ddp"
    state = ckpt.load_checkpoint(exp / "checkpoint_last.tar")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["step"] == 16  # 64 samples: 32 per process, 4 per process and step
    assert len(set(state["replica_digests"])) == 1  # both processes hold identical weights
    grad_norm = read_metrics(exp / "metrics.csv", "train", "grad_norm")[1]
    assert grad_norm == pytest.approx(float(((grads[0] + grads[1]) / 2).norm()), rel=1e-5)
    single = ckpt.load_checkpoint(tmp_path / "single/checkpoint_last.tar")["model"]
    for key, value in state["model"].items():
        torch.testing.assert_close(value, single[key], rtol=1e-5, atol=1e-6)
        assert not torch.equal(value, initial[key])
    val = read_metrics(exp / "metrics.csv", "val", "loss/total")
    assert list(val) == [8, 16] and val[16] < val[8] < initial_val
    assert len(list(exp.glob("events.out.tfevents.*"))) == 1  # only process 0 writes
