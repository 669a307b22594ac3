"""Constructor-argument capture: what every repo object was built with, with no change to user code."""

from .hook import Capture, capture, is_capturing, paused
from .records import CAPTURED, INFERRED
from .tree import build_tree, format_value, summary_lines

__all__ = ["CAPTURED", "INFERRED", "Capture", "build_tree", "capture", "format_value", "is_capturing", "paused",
           "summary_lines"]
