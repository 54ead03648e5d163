"""Every step of the pipeline at 10 %, 30 % and 100 % of a data set of the real size, on this CPU.

    python -m bench.scale [--fractions 0.1,0.3,1] [--root DIR] [--iterations 20]
                          [--work .bench/scale] [--config config.yml] [key.sub=value ...]

``--root`` holds the full-size data set (``python -m asd.synthetic DIR --like-dcase2021``: the
real DCASE 2021 Task 2 counts per section and split, 59,276 clips; the real data works too).
When it does not exist it is written there first. A fraction below 1 is a data root of symbolic
links in ``--work`` to the first share of the root's clips of every (dataset, machine, section,
domain, split, label), groups of three or fewer (the target training clips) kept whole, with
the root's evaluation ground truth: the same clips as the full set, no second copy on disk.

Per fraction, each phase runs as its own command, in a process of its own: the cache build
(``asd.cache``, the fraction's cache built afresh), Step 1 and Step 2 for ``--iterations``
iterations each at the config's batch size (256: the report's; Step 1 through
``runners.common.main`` with a fixed schedule, Step 2 as ``runners.stage2`` with its
``stage2.iterations``), ``asd.submit`` and ``asd.evaluate``. For each it prints the wall time
and the peak memory of the process tree (sampled every 0.1 s): RSS, and RSS less the file pages
mapped in (the memory-mapped cache: shared with the page cache, not the process's own). Then
the growth from the smallest to the largest fraction against the growth of the clips, Step 1's
own memory over its run (flat: nothing kept per iteration), and a PNG of cost against clips in
``--work``. Commands' output goes to ``--work/logs/``. The last line, when the fractions include
1, reads ``full-scale submit: <seconds> s``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from asd import AsdError
from asd.infra.cli import make_parser, run_command
from asd.infra.data import ground_truth_dir, index_dataset, with_ground_truth

PHASES = ("cache", "stage1", "stage2", "submit", "evaluate")
MIB = 2**20
MEMORY = "bench.scale own memory MiB:"


@dataclass
class Phase:
    fraction: float
    clips: int
    name: str
    seconds: float
    samples: list = field(default_factory=list)  # (seconds, RSS, RSS less file pages) in bytes
    marks: list = field(default_factory=list)  # Step 1's own memory (MiB) through its epochs

    @property
    def rss(self) -> float:
        return max((s[1] for s in self.samples), default=0) / MIB

    @property
    def own(self) -> float:
        return max((s[2] for s in self.samples), default=0) / MIB


def subsample(root: Path, out: Path, fraction: float) -> Path:
    """``root`` itself for 1, else ``out`` holding links to ``fraction`` of its clips."""
    if fraction == 1:
        return root
    marker = {"root": str(root.resolve()), "fraction": fraction}
    if (out / "subsample.json").is_file() and json.loads(
        (out / "subsample.json").read_text()
    ) == marker:
        return out
    shutil.rmtree(out, ignore_errors=True)
    index = with_ground_truth(index_dataset(root), root)
    keys = ["dataset", "machine", "section", "domain", "split", "label"]
    for _, rows in index.groupby(keys, dropna=False, sort=False):
        n = len(rows) if len(rows) <= 3 else max(1, round(len(rows) * fraction))
        for path in rows["path"].iloc[:n]:
            link = out / os.path.relpath(path, root.absolute())
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    if ground_truth_dir(root).is_dir():
        ground_truth_dir(out).symlink_to(ground_truth_dir(root).absolute())
    (out / "subsample.json").write_text(json.dumps(marker))
    return out


def measure(cmd: list[str], log: Path) -> tuple[float, list, str]:
    """Run ``cmd``; (seconds, memory samples of its process tree, last line of its stdout).
    Its stdout and stderr go to ``log`` + ``.out`` / ``.err``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    stdout, stderr = Path(f"{log}.out"), Path(f"{log}.err")
    samples = []
    with open(stdout, "w") as out, open(stderr, "w") as err:
        tic = time.perf_counter()
        proc = psutil.Popen(cmd, stdout=out, stderr=err)
        while proc.poll() is None:
            rss = own = 0
            try:
                for p in [proc, *proc.children(recursive=True)]:
                    m = p.memory_info()
                    rss, own = rss + m.rss, own + m.rss - m.shared
            except psutil.Error:  # a process ended while being read
                pass
            samples.append((time.perf_counter() - tic, rss, own))
            time.sleep(0.1)
        seconds = time.perf_counter() - tic
    if proc.returncode == 130:
        raise KeyboardInterrupt
    if proc.returncode:
        tail = (stderr.read_text().strip().splitlines() or ["no output"])[-1]
        raise AsdError(f"{log.name} failed (exit {proc.returncode}): {tail}; see {stderr}")
    lines = stdout.read_text().strip().splitlines()
    return seconds, samples, lines[-1] if lines else ""


def own_memory() -> float:
    """This process's RSS less its file pages, MiB."""
    m = psutil.Process().memory_info()
    return (m.rss - m.shared) / MIB


def step1(iterations: int, argv: list[str]) -> int:
    """``runners.stage1``'s command line for ``iterations`` iterations, as five epochs (fewer
    below five iterations); prints ``MEMORY <MiB>`` on stderr as each epoch starts and at the
    end: this process's own memory after 0, 1/5, ... and all of the iterations."""
    from asd.method.steps import Schedule
    from runners.common import main
    from runners.stage1 import Stage1

    epochs = min(5, iterations)

    class Fixed(Stage1):
        def schedule(self) -> Schedule:
            return Schedule(
                epochs=epochs,
                iterations_per_epoch=iterations // epochs,
                iterations=epochs * (iterations // epochs),
                checkpoint_every=epochs,
            )

        def set_modes(self, net) -> None:  # called as each epoch starts
            print(f"{MEMORY} {own_memory():.1f}", file=sys.stderr, flush=True)

    code = main(Fixed, "Step 1 for a fixed number of iterations.", argv)
    print(f"{MEMORY} {own_memory():.1f}", file=sys.stderr, flush=True)
    return code


def run_fraction(fraction: float, args, work: Path) -> list[Phase]:
    """Every phase on ``fraction`` of the root's clips; their Phase records."""
    root = subsample(Path(args.root), work / f"data-{fraction:g}", fraction)
    clips = len(index_dataset(root))
    cache, runs = work / "cache", work / f"runs-{fraction:g}"
    for old in (cache, runs):  # built afresh: a reused cache or embeddings would time nothing
        shutil.rmtree(old, ignore_errors=True)
    common = [
        "--config",
        args.config,
        f"data.root={root}",
        f"data.cache_dir={cache}",
        f"runs.dir={runs}",
        *args.overrides,
    ]
    py, n = sys.executable, str(args.iterations)
    out, run = [], ""
    for name in PHASES:
        cmd = {
            "cache": [py, "-m", "asd.cache", *common],
            "stage1": [
                py,
                "-c",
                "import sys, bench.scale as b; sys.exit(b.step1(int(sys.argv[1]), sys.argv[2:]))",
                n,
                "--no-progress",
                *common,
            ],
            "stage2": [
                py,
                "-m",
                "runners.stage2",
                "--from",
                run,
                "--no-progress",
                *common,
                f"stage2.iterations={n}",
                f"stage2.log_every={n}",
                f"stage2.checkpoint_every={n}",
            ],
            "submit": [py, "-m", "asd.submit", "--from", run, "--device", "cpu", *common],
            "evaluate": [py, "-m", "asd.evaluate", "--from", run, *common],
        }[name]
        seconds, samples, last = measure(cmd, work / "logs" / f"{name}-{fraction:g}")
        run = last if name in ("stage1", "stage2") else run
        marks = [
            float(line.rsplit(" ", 1)[1])
            for line in (work / "logs" / f"{name}-{fraction:g}.err").read_text().splitlines()
            if line.startswith(MEMORY)
        ]
        out.append(Phase(fraction, clips, name, seconds, samples, marks))
        print(
            f"{fraction:8g} {clips:7d}  {name:9s} {seconds:8.1f} {out[-1].rss:9.0f} "
            f"{out[-1].own:9.0f}",
            flush=True,
        )
    shutil.rmtree(cache, ignore_errors=True)  # the full-size cache is 4.8 GB
    return out


def report(phases: list[Phase], iterations: int) -> list[str]:
    """The growth table and Step 1's memory over its run."""
    small, large = min(p.fraction for p in phases), max(p.fraction for p in phases)
    first = {p.name: p for p in phases if p.fraction == small}
    last = {p.name: p for p in phases if p.fraction == large}
    lines = []
    if small < large:
        clips = last["cache"].clips / first["cache"].clips
        lines += [
            "",
            f"growth {small:g} -> {large:g} ({clips:.1f}x the clips):",
            f"{'phase':9s} {'time':>7s} {'RSS':>7s} {'own':>7s}",
        ]
        for name in PHASES:
            a, b = first[name], last[name]
            lines.append(
                f"{name:9s} {b.seconds / a.seconds:6.2f}x {b.rss / a.rss:6.2f}x "
                f"{b.own / a.own:6.2f}x"
            )
    marks = last["stage1"].marks
    lines += [
        "",
        f"Step 1 at {large:g}, own memory (MiB) after 0, 1/{len(marks) - 1}, ... of its "
        f"{iterations} iterations: {' / '.join(f'{v:.0f}' for v in marks)}",
        f"submit at {large:g}: peak RSS {last['submit'].rss:.0f} MiB "
        f"(own {last['submit'].own:.0f} MiB)",
    ]
    return lines


def plot(phases: list[Phase], path: Path) -> Path:
    """Time and peak RSS of each phase against the clips, one line per phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for name in PHASES:
        mine = sorted((p for p in phases if p.name == name), key=lambda p: p.clips)
        x = [p.clips for p in mine]
        axes[0].plot(x, [p.seconds for p in mine], "o-", label=name)
        (line,) = axes[1].plot(x, [p.rss for p in mine], "o-", label=name)
        axes[1].plot(x, [p.own for p in mine], "x--", color=line.get_color())
    for ax, what in zip(
        axes,
        (
            "wall time (s)",
            "peak memory of the process tree (MiB):\nRSS solid, RSS less file pages dashed",
        ),
    ):
        ax.set(xlabel="clips", ylabel=what, xlim=(0, None), ylim=(0, None))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("bench.scale: cost against clips")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _main(args) -> None:
    fractions = sorted({float(f) for f in args.fractions.split(",")})
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise AsdError(f"--fractions {args.fractions}: expected numbers in (0, 1]")
    if args.iterations < 1:
        raise AsdError(f"--iterations {args.iterations}: expected at least 1")
    args.config = args.config or "config.yml"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not Path(args.root).exists():
        print(f"writing the full-size synthetic data set into {args.root}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "asd.synthetic", args.root, "--like-dcase2021"], check=True
        )
    print(
        f"{'fraction':>8s} {'clips':>7s}  {'phase':9s} {'time s':>8s} {'RSS MiB':>9s} "
        f"{'own MiB':>9s}",
        flush=True,
    )
    phases = [p for f in fractions for p in run_fraction(f, args, work)]
    print("\n".join(report(phases, args.iterations)))
    print(f"plot: {plot(phases, work / 'scale.png')}")
    if fractions[-1] == 1:
        full = next(p for p in phases if p.fraction == 1 and p.name == "submit")
        print(f"full-scale submit: {full.seconds:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("bench.scale", __doc__)
    parser.add_argument(
        "--fractions",
        default="0.1,0.3,1",
        help="shares of the root's clips, comma-separated (default: 0.1,0.3,1)",
    )
    parser.add_argument(
        "--root",
        default="data/synthetic-dcase2021",
        help="the full-size data set (written there when missing; default: "
        "data/synthetic-dcase2021)",
    )
    parser.add_argument(
        "--work",
        default=".bench/scale",
        help="subsamples, caches, runs, logs and the PNG (default: .bench/scale)",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=20,
        help="iterations of Step 1 and of Step 2 (default: 20)",
    )
    return run_command(_main, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
