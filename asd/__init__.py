"""Sub-cluster AdaCos anomalous sound detection (PFU, DCASE 2021 Task 2) in plain PyTorch.

Nothing in this package imports Catalyst: the two training steps live in ``runners/``.
"""

__version__ = "0.1.0"
