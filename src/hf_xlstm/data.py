"""Text data for training and evaluation: loading the tokenizer that belongs to a saved model."""

from __future__ import annotations

import os
from pathlib import Path

# Any of these in a folder means a tokenizer was saved there (fast tokenizers, slow BPE and sentencepiece ones).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def load_tokenizer(source, what: str = "the model"):
    """The tokenizer of a model folder or Hub id, or `source` itself when it is already a tokenizer.

    A local folder without tokenizer files is an error that says how to add one: transformers would otherwise
    substitute a tokenizer guessed from the model type (a two-token one for hf_xlstm), and every later step
    (packing, lm-eval) fails far from the cause or computes nonsense.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    if isinstance(source, PreTrainedTokenizerBase):
        return source
    folder = Path(os.fspath(source)).expanduser()
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{folder} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}), so {what} cannot turn text into "
            f"tokens. Save the tokenizer the model was trained with beside it "
            f"(tokenizer.save_pretrained({str(folder)!r})), or name one explicitly."
        )
    # AutoTokenizer reads the folder's config.json too; importing hf_xlstm (this module's package) registered its
    # model type, so that needs no remote code and asks nothing.
    return AutoTokenizer.from_pretrained(os.fspath(source))
