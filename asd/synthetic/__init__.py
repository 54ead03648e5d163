"""A synthetic data set in the exact DCASE 2021 Task 2 layout, for users without the real data.

``python -m asd.synthetic [ROOT] [--config C] [options]`` (``make synth``) or ``generate(root)``
writes 16 kHz mono 10 s PCM16 WAV files::

    ROOT/dev_data/<machine>/train/section_00_source_train_normal_0000_<attributes>.wav
    ROOT/dev_data/<machine>/{source,target}_test/section_00_source_test_<normal|anomaly>_0000.wav
    ROOT/eval_data/<machine>/train/section_03_...      (the "additional training" sections)
    ROOT/eval_data/<machine>/{source,target}_test/section_03_source_test_0000.wav   (no label)
    ROOT/eval_data/ground_truth/ground_truth_<machine>_section_03_<domain>_test.csv  (file,0|1)
    ROOT/synthetic.json                                (the generation settings)

The ground-truth files have the official DCASE 2021 evaluator's names and rows (see asd.infra.data).
``--layout dcase2022 | dcase2023 | folders`` writes the other layouts (with their own ground
truth), ``--channels 2`` two-channel files as 2026's (docs/synthetic.md "Layouts").

The modules: ``designs`` (each machine's fixed character and operating conditions),
``sources`` (signal building blocks and the factory noise around every clip), ``machines``
(the machine sounds, their faults, one clip), ``counts`` (clips per section, the real data
set's with ``--like-dcase2021``), ``dataset`` (plan and write the files), ``command`` (the
command line). docs/synthetic.md describes the sounds and why they are so.
"""

from asd.synthetic.command import main
from asd.synthetic.counts import SectionCounts, section_counts
from asd.synthetic.dataset import (
    Clip,
    far_microphone,
    generate,
    plan,
    render,
    write_attributes,
    write_ground_truth,
)
from asd.synthetic.designs import (
    DEV_SECTIONS,
    EVAL_SECTIONS,
    FAULTS,
    FORMAT,
    MACHINES,
    MARKER,
    SAMPLE_RATE,
    SECTION_SPREAD,
    design,
)
from asd.synthetic.machines import synthesize
from asd.synthetic.sources import AMBIENCE_DB, AMBIENCE_RATE

__all__ = [
    "AMBIENCE_DB",
    "AMBIENCE_RATE",
    "Clip",
    "DEV_SECTIONS",
    "EVAL_SECTIONS",
    "FAULTS",
    "FORMAT",
    "MACHINES",
    "MARKER",
    "SAMPLE_RATE",
    "SECTION_SPREAD",
    "SectionCounts",
    "design",
    "far_microphone",
    "generate",
    "main",
    "plan",
    "render",
    "section_counts",
    "synthesize",
    "write_attributes",
    "write_ground_truth",
]
