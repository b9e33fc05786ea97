"""The embedded default training pipeline: a synthetic corpus, a small tokenizer, HF-format models
(GPT-NeoX or Llama, optionally attention-only) and a plain-PyTorch loop that writes a checkpoint series.
"""

from headscreen.series.boot import load_tokenizer  # re-exported: the one loader, also for synthetic series
from headscreen.synthetic.config import ARCHITECTURES, ConfigError, TrainConfig
from headscreen.synthetic.corpus import RepeatBatch, SyntheticCorpus
from headscreen.synthetic.diagnostics import copying_diagnostics, phase_change_step
from headscreen.synthetic.model import build_model, is_attn_only
from headscreen.synthetic.tokenizer import Vocab, save_tokenizer
from headscreen.synthetic.train import SERIES_FORMAT, checkpoint_dirname, train_series

__all__ = [
    "ARCHITECTURES", "ConfigError", "RepeatBatch", "SERIES_FORMAT", "SyntheticCorpus", "TrainConfig", "Vocab",
    "build_model", "checkpoint_dirname", "copying_diagnostics", "is_attn_only", "load_tokenizer",
    "phase_change_step", "save_tokenizer", "train_series",
]
