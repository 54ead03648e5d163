"""The Catalyst runner of both training steps, its checkpoint callback and their command line.

``MixupRunner.handle_batch`` is the report's training step: mixup -> embedding net -> sub-cluster
AdaCos (eq. 1) -> KL loss; what differs between Step 1 and Step 2 is a ``Step`` (runners.stage1,
runners.stage2). ``Checkpoints`` writes asd.infra.checkpoint's format (Catalyst's ignore ``resume``).
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from typing import ClassVar

import torch
from catalyst import dl
from tensorboardX import SummaryWriter
from torch import nn
from tqdm import tqdm

from asd.infra.checkpoint import load_checkpoint, save_checkpoint
from asd.infra.cli import make_parser, run_command
from asd.infra.config import Config
from asd.infra.feature_cache import FeatureCache
from asd.infra.training import TrainRun, prepare, world_size
from asd.method.losses import kl_loss, mixup
from asd.method.model import build_model
from asd.method.optim import build_optimizer
from asd.method.sampling import MixupBatches, training_rows

# handle_batch does the backward pass and the optimiser step itself, on purpose.
warnings.filterwarnings("ignore", message=r"No ``I(Backward|Optimizer)Callback")


class Step(TrainRun):
    """One training step of the report; subclasses say what differs."""

    name: ClassVar[str]
    domains: ClassVar[tuple[str, str]]  # where the first and the second clip of a pair come from
    from_help: ClassVar[str | None] = None

    @property
    def settings(self):
        return getattr(self.cfg, self.name)

    def schedule(self) -> tuple[int, int, int, int]:
        """(epochs, steps per epoch, total steps, epochs between two checkpoints)."""

    def init_model(self, model: Classifier) -> None:
        """Initial weights (fresh) and what trains (all)."""

    def set_modes(self, net: nn.Module) -> None:
        """Parts kept in eval mode; Catalyst puts the whole model in training mode each epoch."""


class Classifier(nn.Module):
    """Embedding net + sub-cluster AdaCos head as one module, so DDP sees a single forward."""

    def __init__(self, net: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.net, self.head = net, head

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.net(x).float(), target)  # (B, 1, T, F) -> (B, C) log-probs

    def load(self, ckpt: dict) -> None:
        self.net.load_state_dict(ckpt["model"])
        self.head.load_state_dict(ckpt["head"])


class ConsoleLogger(dl.ConsoleLogger):
    """One short line per epoch, printed above the progress bar."""

    def log_metrics(self, metrics, scope, runner):
        if scope == "loader":
            tqdm.write(
                f"epoch {runner.epoch_step}/{runner.num_epochs}  loss {metrics['loss']:.3f}"
                f"  acc {metrics['accuracy']:.3f}  s {metrics['s']:.1f}  lr "
                f"{metrics['lr']:.0e}  {metrics['samples_per_s']:.0f} samples a second"
            )


class Progress(dl.Callback):
    """One progress bar over the whole run's iterations, with its ETA."""

    def __init__(self, total: int) -> None:
        super().__init__(order=dl.CallbackOrder.External)
        self.total, self.bar = total, tqdm(disable=True)  # made as the first epoch starts

    def on_loader_start(self, runner: MixupRunner) -> None:
        if self.bar.disable and runner.engine.is_main_process:  # after a resume's checkpoint
            done = runner.batch_step // runner.engine.num_processes
            self.bar = tqdm(total=self.total, initial=done, unit="it", dynamic_ncols=True)

    def on_batch_end(self, runner: MixupRunner) -> None:
        self.bar.update()

    def on_experiment_end(self, runner: MixupRunner) -> None:
        self.bar.close()

    on_exception = on_experiment_end


class CSVLogger(dl.CSVLogger):
    """No second header in a resumed run's log; no file for Catalyst's empty ``_epoch_`` rows."""

    def _make_header(self, metrics, loader_key):
        if self.loggers[loader_key].tell() == 0:
            super()._make_header(metrics, loader_key)

    def log_metrics(self, metrics, scope, runner):
        if scope == "epoch":
            metrics = {key: values for key, values in metrics.items() if values}
        super().log_metrics(metrics, scope, runner)


class TensorboardLogger(dl.TensorboardLogger):
    """A resumed run's event files purge the epochs logged again (no doubled curves)."""

    purge_step: int | None = None

    def _check_loader_key(self, loader_key: str) -> None:
        if loader_key not in self.loggers:
            self.loggers[loader_key] = SummaryWriter(
                os.path.join(self.logdir, loader_key), purge_step=self.purge_step
            )


class Checkpoints(dl.Callback):
    """``checkpoints/last.pth`` every few epochs and at the end, then ``model.pth``; resumes from
    ``last.pth``. Epoch k's is written as epoch k + 1 starts, after its log row: never ahead."""

    def __init__(self, step: Step) -> None:
        super().__init__(order=dl.CallbackOrder.External)
        self.step, self.first = step, 0  # first: the epoch this process started after
        self.last = step.run_dir / "checkpoints" / "last.pth"

    def on_experiment_start(self, runner: MixupRunner) -> None:
        if self.step.resume and self.last.is_file():
            ckpt = load_checkpoint(self.last)
            runner.engine.unwrap_model(runner.model).load(ckpt)
            runner.optimizer.load_state_dict(ckpt["optimizer"])
            runner.loaders["train"].load_state_dict(ckpt["sampler"])
            if runner.engine.scaler is not None and ckpt.get("scaler"):  # fp16's loss scale
                runner.engine.scaler.load_state_dict(ckpt["scaler"])
            done = ckpt["step"]
            runner.epoch_step, runner.sample_step = int(done["epoch"]), int(done["samples"])
            runner.batch_step = int(done["iteration"]) * runner.engine.num_processes
        if self.step.resume and "tensorboard" in runner.loggers:  # main process only
            runner.loggers["tensorboard"].purge_step = runner.epoch_step + 1
        self.first = runner.epoch_step

    def on_epoch_start(self, runner: MixupRunner) -> None:
        done = runner.epoch_step - 1
        if done > self.first and done % self.step.schedule()[3] == 0:
            self.save(runner, done)

    def on_experiment_end(self, runner: MixupRunner) -> None:
        self.save(runner, runner.epoch_step, final=True)

    def save(self, runner: MixupRunner, epoch: int, final: bool = False) -> None:
        """``last.pth`` with the resume state; at the end also ``model.pth`` without it."""
        if runner.engine.is_main_process:
            model, world = runner.engine.unwrap_model(runner.model), runner.engine.num_processes
            step = {
                "stage": self.step.name,
                "epoch": epoch,
                "iteration": runner.batch_step // world,
                "samples": runner.sample_step,
                "world_size": world,
                "done": epoch >= runner.num_epochs,
            }
            parts = dict(
                model=model.net,
                head=model.head,
                cfg=self.step.cfg,
                step=step,
                classes=self.step.classes,
                mean=runner.cache.mean,
                std=runner.cache.std,
            )
            scaler = runner.engine.scaler  # fp16's loss scale; None without one
            state = {
                "optimizer": runner.optimizer.state_dict(),
                "sampler": runner.loaders["train"].state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
            }
            save_checkpoint(self.last, **parts, extra=state)
            if final:
                save_checkpoint(self.step.run_dir / "model.pth", **parts)
        runner.engine.wait_for_everyone()


class MixupRunner(dl.Runner):
    """Trains the model of a ``Step`` on mixup pairs drawn from the feature cache."""

    def __init__(self, step: Step) -> None:
        super().__init__()
        self.step = step
        self.cache = None  # set by get_loaders
        # Set by on_loader_start: the epoch's device sums (loss, hits), the (C, C) identity that
        # makes one-hot labels, and the epoch's start time.
        self.sums = None
        self.eye = None
        self.tic = 0.0

    def get_loggers(self):
        logdir = str(self.step.run_dir / "logs")
        return {
            "console": ConsoleLogger(),
            "csv": CSVLogger(logdir=logdir),
            "tensorboard": TensorboardLogger(os.path.join(logdir, "tensorboard")),
        }

    def get_loaders(self):
        step, world = self.step, self.engine.num_processes
        self.cache = FeatureCache.open(step.cache)
        labels, rows = training_rows(self.cache.index, step.classes)
        _, steps_per_epoch, total, _ = step.schedule()
        return {
            "train": MixupBatches(
                self.cache.features,
                self.cache.mean,
                self.cache.std,
                labels,
                *(rows[domain] for domain in step.domains),
                batch_size=step.settings.batch_size // world,
                steps_per_epoch=steps_per_epoch,
                total_steps=total,
                seed=step.settings.seed + 7919 * self.engine.process_index,
                device=self.engine.device,
                cache_on_device=step.cache_on_device,
            )
        }

    def get_model(self):
        model = Classifier(*build_model(self.step.cfg, len(self.step.classes["class"])))
        self.step.init_model(model)
        cpu = self.engine.device.type == "cpu"
        if self.engine.is_ddp and self.step.cfg.engine.sync_bn and not cpu:  # torch's: CUDA only
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model.to(memory_format=torch.channels_last) if cpu else model  # CPU convolutions

    def get_optimizer(self, model):
        s = self.step.settings
        return build_optimizer(model.parameters(), s.optimizer, s.lr, s.weight_decay)

    def get_callbacks(self):
        progress = {"progress": Progress(self.step.schedule()[2])} if self.step.progress else {}
        return {"checkpoints": Checkpoints(self.step), **progress}

    def on_experiment_start(self, runner):
        super().on_experiment_start(runner)  # sets the engine up, then the loaders and model
        torch.backends.cudnn.benchmark = self.engine.device.type == "cuda"  # batches: one shape
        if self.step.cfg.engine.name.startswith("ddp") and not torch.cuda.is_available():
            torch.set_num_threads(1)  # one thread per process, or the processes fight for cores

    def on_loader_start(self, runner):
        # Catalyst puts the whole model in training mode; the step puts back in eval mode the
        # parts it keeps frozen (Step 2: all but `stage2.trainable`, batch-norm statistics too).
        super().on_loader_start(runner)
        self.step.set_modes(self.engine.unwrap_model(self.model).net)
        # The epoch's loss and hits are summed on the device, in float64, and read once at its
        # end: a read per batch would make the host wait for the device every batch.
        self.sums = torch.zeros(2, dtype=torch.float64, device=self.engine.device)
        # One-hot labels are rows of this identity, made once per epoch on the device.
        n_classes = len(self.step.classes["class"])
        self.eye = torch.eye(n_classes, device=self.engine.device)  # (C, C)
        self.tic = time.perf_counter()

    def handle_batch(self, batch):
        """The report's training step on a batch: mixup -> model -> KL loss -> optimiser."""
        # Class ids become one-hot labels by indexing on the device, without a host read.
        y_a = self.eye[batch["y_a"]]  # (B, C)
        y_b = self.eye[batch["y_b"]]  # (B, C)
        # Mixup (report 2.4): each sample is lam * a + (1 - lam) * b, its label likewise, so the
        # model learns how much of each class a mixed clip holds.
        lam = batch["lam"]  # (B,)
        x, y = mixup(batch["x_a"], batch["x_b"], y_a, y_b, lam)  # (B, 1, T, F), (B, C)
        # On a CPU the model runs in channels_last, where convolutions are faster.
        if self.engine.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        # The head gets the mixed labels too: in training mode it re-estimates s from this batch
        # before computing eq. (1).
        log_p = self.model(x, y)  # (B, C)
        # The loss is the KL divergence from the mixed label to the class probabilities.
        loss = kl_loss(log_p, y)
        # Backward pass and optimiser step here rather than in Catalyst's callbacks, so that the
        # whole step reads top to bottom; the engine's backward knows mixed precision and DDP.
        self.engine.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # A hit: the largest class probability is the class the mixed label weighs most.
        correct = (log_p.argmax(1) == y.argmax(1)).sum()
        # Catalyst gets a device tensor, which nothing reads per batch; the epoch's sums stay
        # on the device until on_loader_end.
        self.batch_metrics["loss"] = loss.detach()
        self.sums += torch.stack([loss.detach().double() * len(y), correct.double()])

    def on_loader_end(self, runner):
        # The epoch's one host wait: the device sums become per-sample means.
        loss, accuracy = epoch_means(self.sums, self.loader_sample_step)
        seconds = max(time.perf_counter() - self.tic, 1e-9)
        head = self.engine.unwrap_model(self.model).head
        # Catalyst counts batches over all processes; the log shows each process's iterations.
        iteration = self.batch_step // self.engine.num_processes
        self.loader_metrics.update(
            {
                "loss": loss,
                "accuracy": accuracy,
                "s": float(head.s),
                "lr": self.optimizer.param_groups[0]["lr"],
                "samples_per_s": self.loader_sample_step / seconds,
                "iteration": float(iteration),
            }
        )
        super().on_loader_end(runner)


def epoch_means(sums: torch.Tensor, samples: int) -> list[float]:
    """Per-sample means of an epoch's device sums over every DDP process's samples (all of
    them when ``samples`` counts the global batch); the epoch's one host wait."""
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    return sums.div(samples).tolist()


def make_engine(cfg: Config) -> dl.Engine:
    """The Catalyst engine named by ``engine.name`` (asd.infra.training.check_config checked it)."""
    e, cuda = cfg.engine, torch.cuda.is_available()
    precision = e.amp_dtype if e.name in ("amp", "ddp_amp") else None
    if e.name == "cpu":
        if e.num_threads > 0:
            torch.set_num_threads(e.num_threads)
        return dl.CPUEngine()
    if e.name in ("gpu", "amp"):
        return dl.GPUEngine(mixed_precision=precision)
    with socket.socket() as s:  # a free port for the process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    on_cpu = {} if cuda else {"cpu": True, "process_group_kwargs": {"backend": "gloo"}}
    world = world_size(cfg)  # one process per GPU or CPU
    return dl.DistributedDataParallelEngine(
        world_size=world, num_node_workers=world, port=port, mixed_precision=precision, **on_cpu
    )


def main(kind: type[Step], doc: str, argv: list[str] | None = None) -> int:
    """The command line of a step: train a new run or finish one, then print its folder."""
    parser = make_parser(f"runners.{kind.name}", doc, from_help=kind.from_help)
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="RUN",
        help=f"finish an interrupted run with its own config.yml (default: the "
        f"latest *-{kind.name} run)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(args) -> None:
        run_dir, step = prepare(kind, args)
        if step is not None:  # None: the run is finished
            runner, epochs = MixupRunner(step), step.schedule()[0]
            try:
                runner.train(
                    loaders={},
                    engine=make_engine(step.cfg),
                    seed=step.settings.seed,
                    num_epochs=epochs,
                    hparams=step.cfg.to_dict(),
                )
            except KeyboardInterrupt:  # one line that says how to finish the run
                raise KeyboardInterrupt(
                    f"at epoch {max(runner.epoch_step, 1)} of {epochs}; "
                    f"finish with make {kind.name} RESUME={run_dir}"
                ) from None
        print(run_dir)

    return run_command(run, parser, argv)
