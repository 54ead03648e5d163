"""The Catalyst runner of both training steps, its checkpoint callback and their command line.

``MixupRunner.handle_batch`` is the report's training step: mixup -> embedding net -> sub-cluster
AdaCos (eq. 1) -> KL loss; what differs between Step 1 and Step 2 is a ``Step`` (runners.stage1,
runners.stage2), whose contract (name, domains, schedule, what trains) asd.method.steps declares.
``Checkpoints`` writes asd.infra.checkpoint's format (Catalyst's ignore ``resume``) where the
run folder (asd.infra.runs.Run) says.
"""

from __future__ import annotations

import math
import os
import pydoc
import socket
import time
import warnings
from typing import ClassVar

import numpy as np
import torch
from catalyst import dl
from tensorboardX import SummaryWriter
from torch import nn
from tqdm import tqdm

from asd import AsdError
from asd.infra.checkpoint import save_checkpoint
from asd.infra.cli import make_parser, run_command
from asd.infra.config import Config, StepConfig
from asd.infra.feature_cache import FeatureCache
from asd.infra.training import TrainRun, check_device, prepare, use_device_cache, world_size
from asd.method.losses import kl_loss, mixup
from asd.method.model import build_model, global_batch_norm
from asd.method.optim import build_optimizer
from asd.method.sampling import MixupBatches, training_rows
from asd.method.steps import Schedule

# handle_batch does the backward pass and the optimiser step itself, on purpose.
warnings.filterwarnings("ignore", message=r"No ``I(Backward|Optimizer)Callback")


class Step(TrainRun):
    """One training step of the report (``spec``: its contract); subclasses say how the model
    starts and which parts keep their statistics."""

    from_help: ClassVar[str | None] = None

    @property
    def settings(self) -> StepConfig:
        return self.spec.settings(self.cfg)

    def schedule(self) -> Schedule:
        """How long this run trains (its step's schedule for its source clips)."""
        return self.spec.schedule(self.cfg, self.n_source)

    def init_model(self, model: Classifier) -> None:
        """Initial weights (fresh) and what trains (all)."""

    def set_modes(self, net: nn.Module) -> None:
        """Parts kept in eval mode; Catalyst puts the whole model in training mode each epoch."""


class Classifier(nn.Module):
    """Embedding net + sub-cluster AdaCos head as one module, so DDP sees a single forward."""

    def __init__(self, net: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.head = head

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1, T, F) log-mels -> (B, C) log-probabilities."""
        emb = self.net(x).float()  # (B, D)
        # The head in float32 under autocast too: fp16's range would overflow in its exponentials.
        with torch.autocast(emb.device.type, enabled=False):
            return self.head(emb, target)

    def load(self, ckpt: dict) -> None:
        self.net.load_state_dict(ckpt["model"])
        self.head.load_state_dict(ckpt["head"])


class ConsoleLogger(dl.ConsoleLogger):
    """One short line per epoch, printed above the progress bar."""

    def log_metrics(self, metrics, scope, runner):
        # tqdm.write keeps the line above the progress bar instead of breaking it.
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
        self.total = total
        # The real bar is made as the first epoch starts, once a resume has set the position.
        self.bar = tqdm(disable=True)

    def on_loader_start(self, runner: MixupRunner) -> None:
        # Only the main process shows a bar; a resumed run's starts at the iterations done.
        if self.bar.disable and runner.engine.is_main_process:
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
        # A resumed run appends to its log, which has its header already.
        if self.loggers[loader_key].tell() == 0:
            super()._make_header(metrics, loader_key)

    def log_metrics(self, metrics, scope, runner):
        # Catalyst's epoch scope brings empty ``_epoch_`` values, which would get a file.
        if scope == "epoch":
            metrics = {key: values for key, values in metrics.items() if values}
        super().log_metrics(metrics, scope, runner)


class TensorboardLogger(dl.TensorboardLogger):
    """A resumed run's event files purge the epochs logged again (no doubled curves)."""

    purge_step: int | None = None

    def _check_loader_key(self, loader_key: str) -> None:
        # The writer is made here so that it gets purge_step: epochs logged again replace.
        if loader_key not in self.loggers:
            self.loggers[loader_key] = SummaryWriter(
                os.path.join(self.logdir, loader_key), purge_step=self.purge_step
            )


class Checkpoints(dl.Callback):
    """The run's last checkpoint every few epochs and at the end, then its model; resumes from
    the last checkpoint. Epoch k's is written as epoch k + 1 starts, after its log row: never
    ahead."""

    def __init__(self, step: Step) -> None:
        super().__init__(order=dl.CallbackOrder.External)
        self.step = step
        # The epoch this process started after (a resumed run: its checkpoint's).
        self.first = 0

    def on_experiment_start(self, runner: MixupRunner) -> None:
        ckpt = self.step.run.resume_checkpoint() if self.step.resume else None
        # A resumed run goes on with the weights, optimiser, sampler and counters it had, so it
        # trains as the run would have without the interruption.
        if ckpt is not None:
            runner.engine.unwrap_model(runner.model).load(ckpt)
            runner.optimizer.load_state_dict(ckpt["optimizer"])
            runner.loaders["train"].load_state_dict(ckpt["sampler"])
            # fp16's loss scale; bf16 and float32 have no scaler.
            if runner.engine.scaler is not None and ckpt.get("scaler"):
                runner.engine.scaler.load_state_dict(ckpt["scaler"])
            done = ckpt["progress"]
            runner.epoch_step = int(done["epoch"])
            runner.sample_step = int(done["samples"])
            # Catalyst counts batches over all processes; the checkpoint counts one process's.
            runner.batch_step = int(done["iteration"]) * runner.engine.num_processes
        # Only the main process has the tensorboard logger.
        if self.step.resume and "tensorboard" in runner.loggers:
            runner.loggers["tensorboard"].purge_step = runner.epoch_step + 1
        self.first = runner.epoch_step

    def on_epoch_start(self, runner: MixupRunner) -> None:
        # Epoch k is saved as epoch k + 1 starts, after its log row, so a checkpoint is never
        # ahead of the log; the epoch a resumed run started after is on disk already.
        done = runner.epoch_step - 1
        if done > self.first and done % self.step.schedule().checkpoint_every == 0:
            self.save(runner, done)

    def on_experiment_end(self, runner: MixupRunner) -> None:
        self.save(runner, runner.epoch_step, final=True)

    def save(self, runner: MixupRunner, epoch: int, final: bool = False) -> None:
        """The last checkpoint with the resume state; at the end also the model without it."""
        # One process writes; the others wait for it below, so none runs ahead of the file.
        if runner.engine.is_main_process:
            model = runner.engine.unwrap_model(runner.model)
            world = runner.engine.num_processes
            progress = {
                "stage": self.step.spec.name,
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
                progress=progress,
                classes=self.step.classes,
                mean=runner.cache.mean,
                std=runner.cache.std,
            )
            # fp16's loss scale; None without one.
            scaler = runner.engine.scaler
            # The resume state goes only into the last checkpoint, not into the model.
            state = {
                "optimizer": runner.optimizer.state_dict(),
                "sampler": runner.loaders["train"].state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
            }
            save_checkpoint(self.step.run.last_checkpoint, **parts, extra=state)
            if final:
                save_checkpoint(self.step.run.model, **parts)
        runner.engine.wait_for_everyone()


class MixupRunner(dl.Runner):
    """Trains the model of a ``Step`` on mixup pairs drawn from the feature cache."""

    def __init__(self, step: Step) -> None:
        super().__init__()
        self.step = step
        # Set by get_loaders.
        self.cache = None
        # Set by on_loader_start: the epoch's device sums (loss, hits), the (C, C) identity that
        # makes one-hot labels, and the epoch's start time.
        self.sums = None
        self.eye = None
        self.tic = 0.0

    def get_loggers(self):
        run = self.step.run
        return {
            "console": ConsoleLogger(),
            # Named after the loader, "train": run.train_log.
            "csv": CSVLogger(logdir=str(run.logs)),
            "tensorboard": TensorboardLogger(str(run.tensorboard)),
        }

    def get_loaders(self):
        step = self.step
        world = self.engine.num_processes
        self.cache = FeatureCache.open(step.cache)
        labels, rows = training_rows(self.cache.index, step.classes)
        schedule = step.schedule()
        # Each process decides on its own device whether the rows it draws from fit there.
        drawn = np.union1d(*(rows[domain] for domain in step.spec.domains))
        on_device = use_device_cache(step.cfg, self.cache.features, drawn, self.engine.device)
        # Each process draws its share of the batch, with a seed of its own.
        return {
            "train": MixupBatches(
                self.cache.features,
                self.cache.mean,
                self.cache.std,
                labels,
                *(rows[domain] for domain in step.spec.domains),
                batch_size=step.settings.batch_size // world,
                iterations_per_epoch=schedule.iterations_per_epoch,
                iterations=schedule.iterations,
                seed=step.settings.seed + 7919 * self.engine.process_index,
                device=self.engine.device,
                cache_on_device=on_device,
            )
        }

    def get_model(self):
        model = Classifier(*build_model(self.step.cfg, len(self.step.classes["class"])))
        self.step.init_model(model)
        # Batch-norm statistics over all processes' samples, as one process would see them.
        if self.engine.is_ddp and self.step.cfg.engine.sync_bn:
            model = global_batch_norm(model)
        # On a CPU, convolutions are faster in channels_last.
        cpu = self.engine.device.type == "cpu"
        return model.to(memory_format=torch.channels_last) if cpu else model

    def get_optimizer(self, model):
        s = self.step.settings
        return build_optimizer(model.parameters(), s.optimizer, s.lr, s.weight_decay)

    def get_callbacks(self):
        progress = {}
        if self.step.progress:
            progress["progress"] = Progress(self.step.schedule().iterations)
        return {"checkpoints": Checkpoints(self.step), **progress}

    def on_experiment_start(self, runner):
        # Sets the engine up, then the loaders and the model.
        super().on_experiment_start(runner)
        # Checked once the device cache is built, in the process that owns the device.
        check_device(self.step.cfg, self.engine.device)
        # Every batch has the same shape, so cuDNN's search for the fastest kernels pays off.
        torch.backends.cudnn.benchmark = self.engine.device.type == "cuda"
        # One thread per process, or the DDP processes on a CPU fight for its cores.
        if self.step.cfg.engine.name.startswith("ddp") and not torch.cuda.is_available():
            torch.set_num_threads(1)
        if self.engine.is_main_process:
            tqdm.write(describe_processes(self.step.cfg, self.engine))

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
        check_loss(loss, self.epoch_step, self.step.cfg)
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
    # Under DDP each process summed its own samples; the means are over all of them.
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    return sums.div(samples).tolist()


class NonFiniteLoss(AsdError):
    """An epoch's mean loss is not a number: training stops where it is."""


def check_loss(loss: float, epoch: int, cfg: Config) -> None:
    """NonFiniteLoss where an epoch's mean ``loss`` is not finite (an fp16 overflow, say, after
    which the loss scaler would skip every later step), naming the epoch and the engine. The
    epoch's checkpoint is never written: the last one on disk holds the last good state."""
    if math.isfinite(loss):
        return
    engine = cfg.engine
    # The dtype is named only where the engine casts, since that is where it may be the cause.
    amp = f", engine.amp_dtype={engine.amp_dtype}" if engine.name in ("amp", "ddp_amp") else ""
    raise NonFiniteLoss(
        f"epoch {epoch}: the mean loss is {loss} under engine.name={engine.name}{amp}; "
        "training stopped, and the run's last checkpoint stays as it was"
    )


def describe_processes(cfg: Config, engine: dl.Engine) -> str:
    """The run's first line: how many training processes, on which devices."""
    world = engine.num_processes
    device = engine.device
    casts = cfg.engine.name in ("amp", "ddp_amp")
    precision = f" ({cfg.engine.amp_dtype} autocast)" if casts else ""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if world > 1:
            where = f"cuda:0..{world - 1}, one GPU each ({name})"
        else:
            where = f"{device} ({name})"
    else:
        where = f"the CPU ({torch.get_num_threads()} torch thread(s) each)"
    backend = f", DDP over {torch.distributed.get_backend()}" if engine.is_ddp else ""
    return f"training {cfg.engine.name}{precision}: {world} process(es) on {where}{backend}"


class DistributedEngine(dl.DistributedDataParallelEngine):
    """Catalyst's DDP engine; an error the user can fix (an AsdError) in a training process is
    raised again in the parent as itself, one line, not as the process's traceback."""

    def spawn(self, fn, *args, **kwargs):
        try:
            return super().spawn(fn, *args, **kwargs)
        except torch.multiprocessing.ProcessRaisedException as err:
            # The child's traceback ends in "module.ErrorClass: message".
            last_line = str(err).strip().splitlines()[-1]
            kind = last_line.partition(": ")[0]
            message = last_line.partition(": ")[2]
            error = pydoc.locate(kind)
            # Only the project's own errors are raised again as themselves; others keep their
            # traceback.
            if isinstance(error, type) and issubclass(error, AsdError):
                raise error(message) from None
            raise


def make_engine(cfg: Config) -> dl.Engine:
    """The Catalyst engine named by ``engine.name`` (asd.infra.training.check_config checked it)."""
    e = cfg.engine
    cuda = torch.cuda.is_available()
    precision = e.amp_dtype if e.name in ("amp", "ddp_amp") else None
    if e.name == "cpu":
        if e.num_threads > 0:
            torch.set_num_threads(e.num_threads)
        return dl.CPUEngine()
    if e.name in ("gpu", "amp"):
        return dl.GPUEngine(mixed_precision=precision)
    # The system picks a free port for the process group.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # NCCL needs GPUs; on the CPU the processes talk over gloo.
    on_cpu = {} if cuda else {"cpu": True, "process_group_kwargs": {"backend": "gloo"}}
    # engine.world_size processes (0: one per visible GPU).
    world = world_size(cfg)
    return DistributedEngine(
        world_size=world, num_node_workers=world, port=port, mixed_precision=precision, **on_cpu
    )


def main(kind: type[Step], doc: str, argv: list[str] | None = None) -> int:
    """The command line of a step: train a new run or finish one, then print its folder."""
    name = kind.spec.name
    parser = make_parser(f"runners.{name}", doc, from_help=kind.from_help)
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="RUN",
        help=f"finish an interrupted run with its own config (default: the latest *-{name} run)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(args) -> None:
        run_dir, step = prepare(kind, args)
        # None: the run is finished, and only its folder is printed.
        if step is not None:
            runner = MixupRunner(step)
            epochs = step.schedule().epochs
            try:
                runner.train(
                    loaders={},
                    engine=make_engine(step.cfg),
                    seed=step.settings.seed,
                    num_epochs=epochs,
                    hparams=step.cfg.to_dict(),
                )
            # One line that says how to finish the run.
            except KeyboardInterrupt:
                raise KeyboardInterrupt(
                    f"at epoch {max(runner.epoch_step, 1)} of {epochs}; "
                    f"finish with make {name} RESUME={run_dir}"
                ) from None
        print(run_dir)

    return run_command(run, parser, argv)
