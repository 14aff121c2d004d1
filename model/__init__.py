"""ZeroI2V models: open_clip image transformers with STDHA and mergeable linear adapters."""

from model.checkpoint import CheckpointError, load_merged, read_info, save_merged
from model.config import ZeroI2VConfig, paper_preset
from model.merge import merge_adapters
from model.tasks import build_model
from model.zeroi2v import ZeroI2V

__all__ = [
    "CheckpointError",
    "ZeroI2V",
    "ZeroI2VConfig",
    "build_model",
    "load_merged",
    "merge_adapters",
    "paper_preset",
    "read_info",
    "save_merged",
]
