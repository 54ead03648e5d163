"""Step 2 of the report: fine-tune on source x target pairs with a frozen backbone (5000 it.).

Starts from a Step 1 run's ``model.pth``; only the last residual stage (``stage2.trainable``)
and the sub-cluster AdaCos centres train, every other weight and batch-norm statistic is frozen.

    python -m runners.stage2 --config config.yml [--from runs/NNN-stage1] [key.sub=value ...]
    python -m runners.stage2 --resume [RUN]

Prints the run folder (``runs/NNN-stage2``) as its last line.
"""

from __future__ import annotations

from pathlib import Path

from asd.cache import build_cache
from asd.config import ConfigError, load_config
from asd.data import load_classes, save_classes
from asd.runs import latest_run, new_run
from runners.common import TrainJob, count_source, resume_dir, run_main

# Groups that must equal the Step 1 run's: the network and its inputs are carried over.
_SHARED = ("features", "model", "loss")


def make_job(args) -> TrainJob | None:
    progress = not args.no_progress
    if args.resume:
        run_dir = resume_dir(args, "stage2")
        cfg = load_config(run_dir / "config.yml")
        if (run_dir / "model.pth").is_file():
            return None
        init = Path((run_dir / "init.txt").read_text().strip())
        resume = (run_dir / "checkpoints" / "last.pth").is_file()
    else:
        cfg = load_config(args.config, args.overrides)
        source_run = Path(args.from_run) if args.from_run else latest_run(cfg.runs.dir, "stage1")
        init = source_run / "model.pth"
        if not init.is_file():
            raise ConfigError(f"Step 1 run {source_run} has no model.pth (not finished? "
                              f"`make stage1 ARGS=...` or `python -m runners.stage1 --resume {source_run}`)")
        first = load_config(source_run / "config.yml")
        for group in _SHARED:
            if getattr(first, group) != getattr(cfg, group):
                raise ConfigError(f"config group '{group}' differs from the Step 1 run {source_run}; "
                                  "Step 2 must use the same features, model and loss")
        run_dir = new_run(cfg, "stage2")
        save_classes(load_classes(source_run / "classes.csv"), run_dir / "classes.csv")
        (run_dir / "init.txt").write_text(f"{init.resolve()}\n")
        resume = False
    classes = load_classes(run_dir / "classes.csv").to_dict("list")
    cache = build_cache(cfg, progress=progress)
    return TrainJob(step="stage2", cfg=cfg, run_dir=run_dir, cache_dir=cache.path, classes=classes,
                    n_source=count_source(cache, classes), init_checkpoint=init, resume=resume,
                    progress=progress)


def main(argv=None) -> None:
    run_main("stage2", make_job, argv)


if __name__ == "__main__":
    main()
