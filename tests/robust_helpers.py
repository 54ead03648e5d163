"""The former name of tests/helpers.py, kept for one merge round: import from helpers."""

from helpers import *  # noqa: F403
