"""Step 2 of the report: fine-tune on source x target pairs with a frozen backbone (5000 it.).

Starts from a finished Step 1 run's ``model.pth``; only the parts of the net that
``stage2.trainable`` names (the last residual stage) and the AdaCos centres train.

    python -m runners.stage2 [--from runs/NNN-stage1] [--config config.yml] [key.sub=value ...]
    python -m runners.stage2 --resume [RUN]      # prints the run folder as its last line
"""

from __future__ import annotations

from torch import nn

from asd.infra.checkpoint import load_checkpoint
from asd.infra.cli import load_run
from asd.infra.data import load_classes
from asd.infra.runs import Run
from asd.infra.training import RunStart
from asd.method.model import build_model
from asd.method.optim import set_trainable
from asd.method.steps import STEP2
from runners.common import Step
from runners.common import main as step_main


class Stage2(Step):
    """Step 2: Step 1's weights, and only ``stage2.trainable`` of the net and the head train
    (asd.method.steps.STEP2 has its schedule)."""

    spec = STEP2
    from_help = "Step 1 run to start from (default: the latest finished *-stage1 run)"

    @classmethod
    def start(cls, args):
        # The config is --config's, else the Step 1 run's own.
        path, cfg = load_run(args, cls.spec.starts_from)
        run = Run(path)
        init = run.step1_model(cfg)
        # Refuse a stage2.trainable that names no part of the net before any folder is made.
        set_trainable(build_model(cfg, 1)[0], cfg.stage2.trainable)
        return RunStart(cfg, load_classes(run.classes), init)

    def init_model(self, model: nn.Module) -> None:
        # Step 2 goes on from Step 1's weights.
        model.load(load_checkpoint(self.init))
        # Only the named parts of the net train; the head always does.
        set_trainable(model.net, self.spec.trainable(self.cfg))

    def set_modes(self, net: nn.Module) -> None:
        trainable = self.spec.trainable(self.cfg)
        for name, part in net.named_children():
            # A frozen part keeps its batch-norm statistics too, not only its weights.
            if name not in trainable:
                part.eval()


def main(argv: list[str] | None = None) -> int:
    return step_main(Stage2, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
