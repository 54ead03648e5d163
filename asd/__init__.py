"""Sub-cluster AdaCos anomalous sound detection (PFU, DCASE 2021 Task 2) in plain PyTorch.

Three parts, read in this order:

- ``asd.method``: the report's method (features, model, loss, sampling, optimiser, detectors,
  metrics).
- The commands, one module each, run as ``python -m asd.<name>``: ``index``, ``cache``,
  ``download``, ``submit``, ``evaluate``, ``score``, ``notebooks``; ``runview`` reads a run for
  the notebooks; ``synthetic`` generates the demo data.
- ``asd.infra``: what both stand on (config, data folders, feature cache, run folders,
  checkpoints, files, the command-line wrapper).

Nothing in this package imports Catalyst: the two training steps live in ``runners/``.
"""

__version__ = "0.1.0"


class AsdError(ValueError):
    """A problem the user must fix (a bad file, config key or run folder); the message names it.

    Every command turns it into one line on stderr and exit status 2 (``asd.infra.cli.run_command``).
    """
