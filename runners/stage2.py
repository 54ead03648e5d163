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
        path, cfg = load_run(args, cls.spec.starts_from)  # --config, else the run's own config
        run = Run(path)
        init = run.step1_model(cfg)
        set_trainable(build_model(cfg, 1)[0], cfg.stage2.trainable)  # names a part of the net?
        return cfg, load_classes(run.classes), init

    def init_model(self, model: nn.Module) -> None:
        model.load(load_checkpoint(self.init))  # Step 1's weights
        set_trainable(model.net, self.spec.trainable(self.cfg))  # the head always trains

    def set_modes(self, net: nn.Module) -> None:
        trainable = self.spec.trainable(self.cfg)
        for name, part in net.named_children():
            if name not in trainable:
                part.eval()  # frozen batch-norm statistics


def main(argv: list[str] | None = None) -> int:
    return step_main(Stage2, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
