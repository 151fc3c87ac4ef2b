"""Data for lloglin: tokenizers, text corpora packed into rows, the MQAR synthetic task.

`make_dataset(data_cfg, split=..., seq_len=..., batch_size=..., seed=...)` returns an infinite,
resumable iterator of batches; `make_tokenizer(data_cfg)` the configured tokenizer alone.
"""

from lloglin.data.dataset import Dataset, make_dataset
from lloglin.data.tokenizers import (ByteTokenizer, SentencePieceTokenizer, TiktokenTokenizer,
                                     Tokenizer, make_tokenizer)

__all__ = [
    "ByteTokenizer", "Dataset", "SentencePieceTokenizer", "TiktokenTokenizer", "Tokenizer",
    "make_dataset", "make_tokenizer",
]
