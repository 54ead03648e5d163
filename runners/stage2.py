"""Step 2 of the report: fine-tune on source x target pairs with a frozen backbone (5000 it.).

Starts from a finished Step 1 run's ``model.pth``; only the parts of the net that
``stage2.trainable`` names (the last residual stage) and the AdaCos centres train.

    python -m runners.stage2 [--from runs/NNN-stage1] [--config config.yml] [key.sub=value ...]
    python -m runners.stage2 --resume [RUN]      # prints the run folder as its last line
"""

from __future__ import annotations

import math

from torch import nn

from asd.infra.checkpoint import load_checkpoint, step1_model
from asd.infra.cli import load_run
from asd.infra.data import load_classes
from asd.method.model import build_model
from asd.method.optim import set_trainable
from runners.common import Step
from runners.common import main as step_main


class Stage2(Step):
    """Pairs of one source and one target clip; an "epoch" is ``stage2.log_every`` iterations."""

    name = "stage2"
    domains = ("source", "target")
    from_help = "Step 1 run to start from (default: the latest finished *-stage1 run)"

    def schedule(self) -> tuple[int, int, int, int]:
        s = self.settings
        return (
            math.ceil(s.iterations / s.log_every),
            s.log_every,
            s.iterations,
            max(1, s.checkpoint_every // s.log_every),
        )

    @classmethod
    def start(cls, args):
        run, cfg = load_run(args, "stage1")  # --config, else the Step 1 run's own config.yml
        init = step1_model(run, cfg)
        set_trainable(build_model(cfg, 1)[0], cfg.stage2.trainable)  # names a part of the net?
        return cfg, load_classes(run / "classes.csv"), init

    def init_model(self, model: nn.Module) -> None:
        model.load(load_checkpoint(self.init))  # Step 1's weights
        set_trainable(model.net, self.settings.trainable)  # the head always trains

    def set_modes(self, net: nn.Module) -> None:
        for name, part in net.named_children():
            if name not in self.settings.trainable:
                part.eval()  # frozen batch-norm statistics


def main(argv: list[str] | None = None) -> int:
    return step_main(Stage2, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
