"""Step 1 of the report: train on source clips only, every sample the mixup of two (150 epochs).

    python -m runners.stage1 --config config.yml [key.sub=value ...]
    python -m runners.stage1 --resume [RUN]      # finish an interrupted run

Prints the run folder (``runs/NNN-stage1``) as its last line.
"""

from __future__ import annotations

from asd.cache import build_cache
from asd.config import load_config
from asd.data import class_table, load_classes, save_classes
from asd.runs import new_run
from runners.common import TrainJob, check_clips, count_source, resume_dir, resume_state, run_main


def make_job(args) -> TrainJob | None:
    progress = not args.no_progress
    if args.resume:
        run_dir = resume_dir(args, "stage1")
        cfg = load_config(run_dir / "config.yml")
        resume = resume_state(run_dir, cfg, "stage1")
        if resume is None:
            return None  # finished
        table = load_classes(run_dir / "classes.csv")
    else:
        cfg = load_config(args.config, args.overrides)
        run_dir, resume, table = None, False, None
    cache = build_cache(cfg, progress=progress)
    table = class_table(cache.index) if table is None else table
    classes = table.to_dict("list")
    check_clips(cache, classes, "stage1")  # before a run folder is made
    if run_dir is None:
        run_dir = new_run(cfg, "stage1")
        save_classes(table, run_dir / "classes.csv")
    return TrainJob(step="stage1", cfg=cfg, run_dir=run_dir, cache_dir=cache.path, classes=classes,
                    n_source=count_source(cache, classes), resume=resume, progress=progress)


def main(argv=None) -> None:
    run_main("stage1", make_job, argv)


if __name__ == "__main__":
    main()
