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
from asd.checkpoint import MODEL_GROUPS
from asd.config import ConfigError, config_diffs, load_config
from asd.data import load_classes, save_classes
from asd.io import atomic_write_text
from asd.runs import latest_run, new_run
from runners.common import (TrainJob, check_clips, check_init, check_trainable, count_source,
                            resume_dir, resume_state, run_main)

def make_job(args) -> TrainJob | None:
    progress = not args.no_progress
    if args.resume:
        run_dir = resume_dir(args, "stage2")
        cfg = load_config(run_dir / "config.yml")
        resume = resume_state(run_dir, cfg, "stage2")
        if resume is None:
            return None  # finished
        init = Path((run_dir / "init.txt").read_text().strip())
        table = load_classes(run_dir / "classes.csv")
    else:
        cfg = load_config(args.config, args.overrides)
        source_run = Path(args.from_run) if args.from_run else latest_run(cfg.runs.dir, "stage1")
        init = source_run / "model.pth"
        if not init.is_file():
            raise ConfigError(f"Step 1 run {source_run} has no model.pth (not finished? "
                              f"`make stage1 ARGS=...` or "
                              f"`python -m runners.stage1 --resume {source_run}`)")
        diffs = config_diffs(load_config(source_run / "config.yml").to_dict(), cfg.to_dict(),
                             MODEL_GROUPS, "Step 1 run", "config")
        if diffs:
            raise ConfigError(f"the config differs from the Step 1 run {source_run} "
                              f"({'; '.join(diffs)}); Step 2 must use the same features, model "
                              "and loss")
        check_trainable(cfg)
        run_dir, resume = None, False
        table = load_classes(source_run / "classes.csv")
    classes = table.to_dict("list")
    check_init(init, cfg, classes)  # before any training: a clear error, never a traceback
    cache = build_cache(cfg, progress=progress)
    check_clips(cache, classes, "stage2")
    if run_dir is None:
        run_dir = new_run(cfg, "stage2")
        save_classes(table, run_dir / "classes.csv")
        atomic_write_text(run_dir / "init.txt", f"{init.resolve()}\n")
    return TrainJob(step="stage2", cfg=cfg, run_dir=run_dir, cache_dir=cache.path, classes=classes,
                    n_source=count_source(cache, classes), init_checkpoint=init, resume=resume,
                    progress=progress)


def main(argv=None) -> None:
    run_main("stage2", make_job, argv)


if __name__ == "__main__":
    main()
