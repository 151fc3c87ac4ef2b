"""Data for lloglin: tokenizers, text corpora packed into rows, synthetic tasks (MQAR, flip-flop),
a synthetic multilingual world (lloglin.data.multilingual), preference pairs for reward models,
synthetic scenes of objects for dual encoders (lloglin.data.scenes) and the NegBench items and
training records built from them (lloglin.data.negbench).

`make_dataset(data_cfg, split=..., seq_len=..., batch_size=..., seed=...)` returns an infinite,
resumable iterator of LM batches; `make_preference_dataset` (same arguments) one of preference
pairs; `make_tokenizer(data_cfg)` the configured tokenizer alone.
"""

from lloglin.data.dataset import Dataset, make_dataset
from lloglin.data.preferences import make_preference_dataset
from lloglin.data import negbench  # noqa: F401  (registers the image-text sources of the scenes)
from lloglin.data.tokenizers import (ByteTokenizer, SentencePieceTokenizer, TiktokenTokenizer,
                                     Tokenizer, WordTokenizer, make_tokenizer)

__all__ = [
    "ByteTokenizer", "Dataset", "SentencePieceTokenizer", "TiktokenTokenizer", "Tokenizer",
    "WordTokenizer", "make_dataset", "make_preference_dataset", "make_tokenizer",
]
