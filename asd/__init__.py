"""Sub-cluster AdaCos anomalous sound detection (PFU, DCASE 2021 Task 2) in plain PyTorch.

Nothing in this package imports Catalyst: the two training steps live in ``runners/``.
"""

__version__ = "0.1.0"


class AsdError(ValueError):
    """A problem the user must fix (a bad file, config key or run folder); the message names it.

    Every command turns it into one line on stderr and exit status 2 (``asd.cli.run_command``).
    """
