"""The Catalyst runner shared by Step 1 and Step 2.

``handle_batch`` is the whole training step of the report: mixup of the two clips and their
one-hot labels -> EmbeddingNet -> sub-cluster AdaCos class probabilities (eq. 1) -> KL loss.
Everything it uses is built from ``asd``; Catalyst supplies the loop, the engines (CPU, GPU,
mixed precision, distributed data parallel), the loggers and the progress bar.

Catalyst 22.04 quirks handled here (measured on torch 2.13 / accelerate 1.12):
- ``Runner.train(resume=...)`` is ignored and its CheckpointCallback chokes on DDP's
  ``module.`` prefix: checkpoints and resume are done by ``CheckpointSaver`` and
  ``MixupRunner.on_experiment_start`` in the project's own weights-only format.
- Catalyst calls ``model.train()`` at every loader start: frozen stages are put back in
  eval mode right after, so their batch-norm statistics stay fixed in Step 2.
- ``batch_metrics`` are not aggregated per epoch: meters fill ``loader_metrics``.
- DDP on CPU needs ``cpu=True`` and the gloo backend, one thread per process.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
import torch.nn.functional as F
from catalyst import dl, metrics
from torch import nn

from asd.cache import FeatureCache
from asd.checkpoint import (MODEL_GROUPS, CheckpointError, check_compatible, load_checkpoint,
                            save_checkpoint)
from asd.config import Config, ConfigError, config_diffs
from asd.data import assign_classes
from asd.io import atomic_write_text
from asd.runs import latest_run
from asd.losses import SubClusterAdaCos, kl_loss, mixup
from asd.model import EmbeddingNet, build_model
from asd.optim import build_optimizer
from asd.sampling import MixupBatches

log = logging.getLogger(__name__)

# handle_batch does the backward pass and the optimiser step itself, on purpose.
warnings.filterwarnings("ignore", message=r"No ``I(Backward|Optimizer)Callback")


class EmbeddingClassifier(nn.Module):
    """EmbeddingNet + SubClusterAdaCos as one module, so DDP sees a single forward."""

    def __init__(self, net: EmbeddingNet, head: SubClusterAdaCos) -> None:
        super().__init__()
        self.net = net
        self.head = head

    def forward(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        emb = self.net(x)  # (B, D)
        return self.head(emb.float(), target)  # (B, C) log class probabilities


@dataclasses.dataclass
class TrainJob:
    """Everything a (possibly spawned) training process needs; small and picklable."""

    step: str  # "stage1" | "stage2"
    cfg: Config
    run_dir: Path
    cache_dir: Path
    classes: dict  # class table as dict of lists
    n_source: int  # source training clips (an epoch of Step 1)
    init_checkpoint: Optional[Path] = None  # Step 2: the Step 1 model
    resume: bool = False
    progress: bool = True

    @property
    def n_classes(self) -> int:
        return len(self.classes["class"])

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pth"


class ResumableCSVLogger(dl.CSVLogger):
    """Catalyst's CSV logger, but a resumed run appends rows without a second header."""

    def _make_header(self, metrics, loader_key):
        handle = self.loggers[loader_key]
        if handle.tell() == 0:
            super()._make_header(metrics, loader_key)


class ResumableTensorboardLogger(dl.TensorboardLogger):
    """Catalyst's TensorBoard logger; a resumed run's event files start with a purge step, so
    TensorBoard drops the earlier points of the epochs it logs again (no doubled curves)."""

    def __init__(self, logdir: str) -> None:
        super().__init__(logdir=logdir)
        self.purge_step: Optional[int] = None  # first epoch this process logs after a resume

    def _check_loader_key(self, loader_key: str) -> None:
        if loader_key not in self.loggers:
            from tensorboardX import SummaryWriter

            self.loggers[loader_key] = SummaryWriter(os.path.join(self.logdir, loader_key),
                                                     purge_step=self.purge_step)


class CheckpointSaver(dl.Callback):
    """Writes ``checkpoints/last.pth`` atomically every few epochs and ``model.pth`` at the end.

    Called by ``MixupRunner.on_epoch_end`` after the epoch's log row is written (Catalyst would
    call a callback before): a run killed between the two then never misses a row on resume.
    """

    def __init__(self, job: TrainJob, every: int) -> None:
        super().__init__(order=dl.CallbackOrder.External)
        self.job = job
        self.every = every

    def after_logging(self, runner: "MixupRunner") -> None:
        last = runner.epoch_step >= runner.num_epochs
        if runner.engine.is_main_process and (last or runner.epoch_step % self.every == 0):
            runner.save(self.job.last_checkpoint, with_state=True)
        if runner.engine.is_main_process and last:
            runner.save(self.job.run_dir / "model.pth", with_state=False)
        runner.engine.wait_for_everyone()


class MixupRunner(dl.Runner):
    """Step 1 or Step 2 of the report, depending on ``job.step``."""

    def __init__(self, job: TrainJob) -> None:
        super().__init__()
        self.job = job
        self.step_cfg = job.cfg.stage1 if job.step == "stage1" else job.cfg.stage2
        self.cache: Optional[FeatureCache] = None
        self._meters: dict = {}
        self._tic = 0.0

    # ---- what Catalyst builds inside each process -------------------------------------------
    @property
    def num_epochs(self) -> int:
        return schedule(self.job)[0]

    def get_loggers(self):
        logdir = str(self.job.run_dir / "logs")
        return {
            "console": dl.ConsoleLogger(),
            "csv": ResumableCSVLogger(logdir=logdir),
            "tensorboard": ResumableTensorboardLogger(os.path.join(logdir, "tensorboard")),
        }

    def get_loaders(self):
        cfg, job = self.job.cfg, self.job
        self.cache = FeatureCache.open(job.cache_dir)
        index = self.cache.index
        labels = _labels(index, job.classes)
        train = (index["split"] == "train").to_numpy() & (labels >= 0)
        source = train & (index["domain"] == "source").to_numpy()
        target = train & (index["domain"] == "target").to_numpy()
        if job.step == "stage1":
            first = second = source.nonzero()[0]
        else:
            first, second = source.nonzero()[0], target.nonzero()[0]
        world, rank = self.engine.num_processes, self.engine.process_index
        n_epochs, steps_per_epoch, total = schedule(job)
        if self.step_cfg.batch_size % world:
            raise ConfigError(f"{job.step}.batch_size={self.step_cfg.batch_size} is not divisible "
                              f"by engine.world_size={world}")
        loader = MixupBatches(
            self.cache.features, self.cache.mean, self.cache.std, labels, first, second,
            batch_size=self.step_cfg.batch_size // world, steps_per_epoch=steps_per_epoch,
            total_steps=total, seed=self.step_cfg.seed + 7919 * rank, device=self.engine.device,
            cache_on_device=cfg.engine.cache_on_device)
        return {"train": loader}

    def get_model(self):
        cfg = self.job.cfg
        net, head = build_model(cfg, self.job.n_classes)
        if self.job.init_checkpoint is not None:
            ckpt = load_checkpoint(self.job.init_checkpoint)
            net.load_state_dict(ckpt["model"])
            head.load_state_dict(ckpt["head"])
        model = EmbeddingClassifier(net, head)
        if self.job.step == "stage2":
            freeze_for_stage2(model, self.job.cfg.stage2.trainable)
        if self.engine.device.type == "cpu":
            model = model.to(memory_format=torch.channels_last)  # ~1.7x faster convolutions
        return model

    def get_optimizer(self, model):
        s = self.step_cfg
        return build_optimizer(model.parameters(), s.optimizer, s.lr, s.weight_decay)

    def get_callbacks(self):
        every = self.job.cfg.stage1.checkpoint_every if self.job.step == "stage1" else max(
            1, self.job.cfg.stage2.checkpoint_every // self.job.cfg.stage2.log_every)
        callbacks = {"checkpoint": CheckpointSaver(self.job, every)}
        if self.job.progress:
            callbacks["progress"] = dl.TqdmCallback()
        return callbacks

    # ---- events -----------------------------------------------------------------------------
    def on_experiment_start(self, runner):
        if self.job.cfg.engine.name == "ddp" and not torch.cuda.is_available():
            torch.set_num_threads(1)  # one thread per process, or the processes fight for cores
        super().on_experiment_start(runner)
        if self.job.resume:
            self._restore(self.job.last_checkpoint)
            board = self.loggers.get("tensorboard")  # main process only
            if isinstance(board, ResumableTensorboardLogger):
                board.purge_step = self.epoch_step + 1

    def on_loader_start(self, runner):
        super().on_loader_start(runner)  # calls model.train() on everything
        if self.job.step == "stage2":
            keep_frozen_in_eval(self.engine.unwrap_model(self.model), self.job.cfg.stage2.trainable)
        self._meters = {k: metrics.AdditiveMetric(compute_on_call=False)
                        for k in ("loss", "accuracy")}
        self._tic = time.perf_counter()

    def handle_batch(self, batch):
        n = self.job.n_classes
        y_a = F.one_hot(batch["y_a"], n).float()
        y_b = F.one_hot(batch["y_b"], n).float()
        x, y = mixup(batch["x_a"], batch["x_b"], y_a, y_b, batch["lam"])  # (B, 1, T, F), (B, C)
        if self.engine.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        log_p = self.model(x, y)  # (B, C)
        loss = kl_loss(log_p, y)
        self.engine.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        accuracy = (log_p.argmax(1) == y.argmax(1)).float().mean()
        self.batch_metrics.update({"loss": loss.detach(), "accuracy": accuracy})
        for key in self._meters:
            self._meters[key].update(float(self.batch_metrics[key]), len(y))

    def on_epoch_end(self, runner):
        super().on_epoch_end(runner)  # the epoch's CSV row, flushed
        self.callbacks["checkpoint"].after_logging(self)

    def on_loader_end(self, runner):
        elapsed = time.perf_counter() - self._tic
        head = self.engine.unwrap_model(self.model).head
        samples = self.loader_batch_len * self.loader_batch_size * self.engine.num_processes
        self.loader_metrics.update({key: meter.compute()[0] for key, meter in self._meters.items()})
        self.loader_metrics.update({
            "s": float(head.s),
            "lr": self.optimizer.param_groups[0]["lr"],
            "samples_per_s": samples / max(elapsed, 1e-9),
            "iteration": float(self.iteration),
        })
        super().on_loader_end(runner)

    # ---- checkpoints ------------------------------------------------------------------------
    @property
    def iteration(self) -> int:
        """Optimiser steps so far (Catalyst's batch_step counts one per process)."""
        return self.batch_step // self.engine.num_processes

    def save(self, path: Path, with_state: bool) -> None:
        model = self.engine.unwrap_model(self.model)
        extra = None
        if with_state:
            extra = {
                "optimizer": self.optimizer.state_dict(),
                "sampler": self.loaders["train"].state_dict(),
            }
        save_checkpoint(
            path, model=model.net, head=model.head, cfg=self.job.cfg,
            classes=pd.DataFrame(self.job.classes),
            mean=self.cache.mean, std=self.cache.std,
            step={"stage": self.job.step, "epoch": self.epoch_step, "iteration": self.iteration,
                  "samples": self.sample_step, "world_size": self.engine.num_processes,
                  "done": self.epoch_step >= self.num_epochs},
            extra=extra)

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        model = self.engine.unwrap_model(self.model)
        model.net.load_state_dict(ckpt["model"])
        model.head.load_state_dict(ckpt["head"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.loaders["train"].load_state_dict(ckpt["sampler"])
        self.epoch_step = int(ckpt["step"]["epoch"])
        self.batch_step = int(ckpt["step"]["iteration"]) * self.engine.num_processes
        self.sample_step = int(ckpt["step"]["samples"])
        log.info("resumed %s at epoch %d, iteration %d", path, self.epoch_step, self.batch_step)


def _labels(index, classes: dict):
    """Class id of every cache row under the run's class table (-1: class unknown to the run)."""
    return assign_classes(index, pd.DataFrame(classes))["class"].to_numpy()


def schedule(job: TrainJob) -> tuple[int, int, int]:
    """(epochs, steps per epoch, total steps) of a step.

    Step 1: an epoch is as many mixed samples as there are source training clips, rounded up to
    whole batches. Step 2: an "epoch" is ``log_every`` iterations (the logging period).
    """
    cfg = job.cfg
    if job.step == "stage1":
        steps = max(1, math.ceil(job.n_source / cfg.stage1.batch_size))
        return cfg.stage1.epochs, steps, cfg.stage1.epochs * steps
    steps = cfg.stage2.log_every
    return math.ceil(cfg.stage2.iterations / steps), steps, cfg.stage2.iterations


def freeze_for_stage2(model: EmbeddingClassifier, trainable: tuple[str, ...]) -> None:
    """Only ``trainable`` stages of the network and the AdaCos centres keep gradients."""
    names = dict(model.net.named_children())
    unknown = [t for t in trainable if t not in names]
    if unknown:
        raise ConfigError(f"stage2.trainable names {unknown}, not a part of the model "
                          f"(parts: {', '.join(names)})")
    for name, module in names.items():
        module.requires_grad_(name in trainable)
    model.head.requires_grad_(True)


def keep_frozen_in_eval(model: EmbeddingClassifier, trainable: tuple[str, ...]) -> None:
    for name, module in model.net.named_children():
        if name not in trainable:
            module.eval()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_engine(cfg: Config) -> dl.Engine:
    """The Catalyst engine named by ``engine.name``."""
    e = cfg.engine
    if e.name == "cpu":
        if e.num_threads > 0:
            torch.set_num_threads(e.num_threads)
        return dl.CPUEngine()
    if e.name in ("gpu", "amp") and not torch.cuda.is_available():
        raise ConfigError(f"engine.name={e.name} needs a CUDA GPU, and none is visible")
    if e.name == "gpu":
        return dl.GPUEngine()
    if e.name == "amp":
        return dl.GPUEngine(mixed_precision=e.amp_dtype)
    if torch.cuda.is_available():  # ddp: one process per GPU
        return dl.DistributedDataParallelEngine(world_size=e.world_size,
                                                num_node_workers=e.world_size, port=free_port())
    return dl.DistributedDataParallelEngine(  # ddp on CPU: gloo, one thread per process
        cpu=True, world_size=e.world_size, num_node_workers=e.world_size, port=free_port(),
        process_group_kwargs={"backend": "gloo"})


def parse_args(step: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m runners.{step}",
                                description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config.yml", help="config file (default: config.yml)")
    if step == "stage2":
        p.add_argument("--from", dest="from_run", default=None,
                       help="Step 1 run folder to start from (default: the latest *-stage1 run)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN",
                   help=f"finish an interrupted run (default: the latest *-{step} run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return p.parse_args(argv)


def train(job: TrainJob) -> Path:
    """Run a job to the end and return its run folder."""
    runner = MixupRunner(job)
    runner.train(loaders={}, engine=make_engine(job.cfg), seed=runner.step_cfg.seed,
                 num_epochs=runner.num_epochs, hparams=job.cfg.to_dict())
    return job.run_dir


def count_source(cache: FeatureCache, classes: dict) -> int:
    index = cache.index
    labels = _labels(index, classes)
    return int(((index["split"] == "train") & (index["domain"] == "source") & (labels >= 0)).sum())


def check_clips(cache: FeatureCache, classes: dict, step: str) -> None:
    """ConfigError unless the data root has training clips of the run's classes to draw from."""
    index = cache.index
    train = (index["split"] == "train").to_numpy() & (_labels(index, classes) >= 0)
    domains = ("source",) if step == "stage1" else ("source", "target")
    for domain in domains:
        if not (train & (index["domain"] == domain).to_numpy()).any():
            known = sorted({f"{m} {s}" for m, s in zip(classes["machine"], classes["section"])})
            raise ConfigError(f"the data root {cache.settings.get('root')} has no {domain} "
                              f"training clips of the run's classes ({', '.join(known)}); "
                              f"{step} needs them (was the run made on other data?)")


def check_trainable(cfg: Config) -> None:
    """ConfigError before any run folder is made when stage2.trainable names no model part."""
    net, _ = build_model(cfg, 1)
    freeze_for_stage2(EmbeddingClassifier(net, nn.Identity()), cfg.stage2.trainable)


def check_init(init: Path, cfg: Config, classes: dict) -> None:
    """The Step 1 model a Step 2 run starts from: readable (weights only), trained with the same
    features, model and loss settings and the same classes; CheckpointError naming it else."""
    ckpt = load_checkpoint(init)
    check_compatible(ckpt, cfg, init)
    if {k: list(map(str, v)) for k, v in ckpt["classes"].items()} != \
            {k: list(map(str, v)) for k, v in classes.items()}:
        raise CheckpointError(f"checkpoint {init} was trained on other classes than the run's "
                              f"classes.csv ({len(ckpt['classes'].get('class', []))} vs "
                              f"{len(classes['class'])} classes)")


def check_resume(run_dir: Path, cfg: Config, step: str) -> Optional[dict]:
    """The run's resume checkpoint (None: there is none yet), checked before any training.

    Removes the temporary files of a writer killed mid-save (never read), refuses a checkpoint
    that cannot be read with weights_only (CheckpointError naming it) and one written with other
    settings than the run's ``config.yml`` now holds (ConfigError naming the keys: the file was
    edited). When all the steps were done (killed before ``model.pth`` was written), writes
    ``model.pth`` from it, exactly as the finished run would have.
    """
    last = run_dir / "checkpoints" / "last.pth"
    for stale in last.parent.glob(f".{last.name}.*.tmp"):
        stale.unlink()
    if not last.is_file():
        return None
    ckpt = load_checkpoint(last)
    diffs = config_diffs(ckpt["config"], cfg.to_dict(), (*MODEL_GROUPS, step), "checkpoint",
                         "config.yml")
    if diffs:
        raise ConfigError(f"{run_dir / 'config.yml'} differs from the settings {last} was trained "
                          f"with ({'; '.join(diffs)}); put them back or start a new run")
    _trim_log(run_dir / "logs" / "train.csv", int(ckpt["step"]["epoch"]))
    if ckpt["step"].get("done") and not (run_dir / "model.pth").exists():
        stats = ckpt["feature_stats"]
        save_checkpoint(run_dir / "model.pth", model=ckpt["model"], head=ckpt["head"], cfg=cfg,
                        classes=ckpt["classes"], mean=stats["mean"], std=stats["std"],
                        step=ckpt["step"])
        log.info("%s: all steps were done; wrote model.pth from %s", run_dir, last)
    return ckpt


def resume_state(run_dir: Path, cfg: Config, step: str) -> Optional[bool]:
    """For ``--resume``: None when the run is finished (``model.pth`` was there, or
    ``check_resume`` just wrote it from a final checkpoint), else whether a checkpoint exists to
    continue from (False: start from the first epoch)."""
    if (run_dir / "model.pth").is_file():
        return None
    resume = check_resume(run_dir, cfg, step) is not None
    return None if (run_dir / "model.pth").is_file() else resume


def _trim_log(path: Path, epoch: int) -> None:
    """Drop the log rows of epochs after the checkpoint's: the resumed run logs them again."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = lines[:1] + [line for line in lines[1:] if line.split(",", 1)[0].isdigit()
                        and int(line.split(",", 1)[0]) <= epoch and line.endswith("\n")]
    if keep != lines:
        atomic_write_text(path, "".join(keep))


def resume_dir(args: argparse.Namespace, step: str) -> Path:
    """The run folder named by ``--resume`` (or the latest ``*-<step>`` run)."""
    if args.resume != "latest":
        run = Path(args.resume)
        if not (run / "config.yml").is_file():
            raise ConfigError(f"{run} is not a run folder (no config.yml)")
        return run
    from asd.config import load_config

    return latest_run(load_config(args.config or "config.yml", args.overrides).runs.dir, step,
                      finished=False)


def run_main(step: str, make_job, argv=None) -> None:
    """Shared command line of both steps: parse, build or resume the job, train, print the run."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(step, argv)
    try:
        job = make_job(args)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        raise SystemExit(f"{step}: error: {err}") from None
    if job is not None:
        try:
            train(job)
        except (ConfigError, CheckpointError, OSError) as err:  # e.g. a full disk: one line
            raise SystemExit(f"{step}: error: {err}") from None
        run_dir = job.run_dir
    else:
        run_dir = resume_dir(args, step)
    print(run_dir)
