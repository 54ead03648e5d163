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
from runners.common import TrainJob, check_clips, check_resume, count_source, resume_dir, run_main


def make_job(args) -> TrainJob | None:
    progress = not args.no_progress
    if args.resume:
        run_dir = resume_dir(args, "stage1")
        cfg = load_config(run_dir / "config.yml")
        classes = load_classes(run_dir / "classes.csv").to_dict("list")
        if (run_dir / "model.pth").is_file():
            return None  # already finished
        resume = check_resume(run_dir, cfg, "stage1") is not None
        if (run_dir / "model.pth").is_file():
            return None  # every epoch was done: model.pth written from the last checkpoint
    else:
        cfg = load_config(args.config, args.overrides)
        run_dir = None
        resume = False
    cache = build_cache(cfg, progress=progress)
    if run_dir is None:
        table = class_table(cache.index)
        classes = table.to_dict("list")
        check_clips(cache, classes, "stage1")
        run_dir = new_run(cfg, "stage1")
        save_classes(table, run_dir / "classes.csv")
    else:
        check_clips(cache, classes, "stage1")
    return TrainJob(step="stage1", cfg=cfg, run_dir=run_dir, cache_dir=cache.path, classes=classes,
                    n_source=count_source(cache, classes), resume=resume, progress=progress)


def main(argv=None) -> None:
    run_main("stage1", make_job, argv)


if __name__ == "__main__":
    main()
