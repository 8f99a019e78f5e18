"""Text data for training and evaluation, in one place: where documents come from (the embedded standard-library
corpus, local files, a `datasets` dataset), the tokenizer (a saved one, or a byte-level BPE trained here), and
packing documents into fixed-length blocks.

One rule for files everywhere (pretraining, fine-tuning, the held-out evaluation task): a .txt / .md / .py file is
one document; .json / .jsonl / .csv / .parquet files hold one document per row, in a text column.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Iterable, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

EMBEDDED_CORPUS = "python-stdlib"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# File suffix -> `datasets` builder. "text": the whole file is one document.
FILE_BUILDERS = {".txt": "text", ".md": "text", ".py": "text", ".json": "json", ".jsonl": "json",
                 ".parquet": "parquet", ".csv": "csv"}
# Directories of the standard library that are tests, vendored packages or platform tools rather than library code.
STDLIB_SKIP = {"test", "tests", "site-packages", "dist-packages", "idlelib", "lib2to3", "ensurepip", "turtledemo",
               "__pycache__", "venv", "tkinter", "pydoc_data", "unittest", "distutils", "encodings"}
# Any of these in a folder means a tokenizer was saved there (fast tokenizers, slow BPE and sentencepiece ones).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


# ---------------------------------------------------------------------------------------------------- documents
def stdlib_corpus(max_chars: int = 3_000_000, max_file_chars: int = 60_000) -> list[dict[str, str]]:
    """Documents from the .py files of this interpreter's standard library: nothing is downloaded.

    Deterministic: files are ordered by a hash of their path relative to the stdlib root (a mix of all modules,
    not the alphabetically first ones) and taken until `max_chars` characters. Tests, vendored packages and very
    large files are left out. Returns [{"text": source, "path": relative path}].
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    candidates = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if any(part in STDLIB_SKIP or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        if rel.name.startswith("test_"):
            continue
        candidates.append((hashlib.sha1(rel.as_posix().encode()).hexdigest(), rel, path))
    if not candidates:
        raise RuntimeError(f"No standard-library sources found under {root}; pass --dataset_name or --train_files.")
    documents, total = [], 0
    for _, rel, path in sorted(candidates):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip() or len(text) > max_file_chars:
            continue
        documents.append({"text": text, "path": rel.as_posix()})
        total += len(text)
        if total >= max_chars:
            break
    return documents


def read_documents(files: Sequence[str | os.PathLike], text_column: str = "text"):
    """A datasets.Dataset with one "text" column: a document per .txt/.md/.py file, or per row of .json/.jsonl/
    .csv/.parquet files (all of one kind) taken from `text_column`."""
    from datasets import Dataset, load_dataset

    if not files:
        raise ValueError("No files given.")
    kinds = set()
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"{str(file)!r} does not exist (or is not a file).")
        if path.suffix.lower() not in FILE_BUILDERS:
            raise ValueError(f"{file}: unsupported file type {path.suffix!r}; use one of {sorted(FILE_BUILDERS)}.")
        kinds.add(FILE_BUILDERS[path.suffix.lower()])
    if len(kinds) > 1:
        raise ValueError(f"Files of mixed kinds {sorted(kinds)}: give plain-text files or one tabular format, "
                         f"got {[str(f) for f in files]}.")
    kind = kinds.pop()
    if kind == "text":
        return Dataset.from_dict({"text": [Path(f).read_text(encoding="utf-8") for f in files]})
    return text_column_only(load_dataset(kind, data_files=[str(f) for f in files], split="train"), text_column)


def text_column_only(data, text_column: str):
    """`data` with only its text column, named "text"; a clear error when the column is missing."""
    if text_column not in data.column_names:
        raise ValueError(f"The data has no text column {text_column!r} (columns: {data.column_names}); set the "
                         "text column (--text_column).")
    data = data.select_columns([text_column])
    return data.rename_column(text_column, "text") if text_column != "text" else data


def load_documents(*, dataset_name: str | None = None, dataset_config_name: str | None = None,
                   train_files: Sequence[str] = (), validation_files: Sequence[str] = (), text_column: str = "text",
                   max_corpus_chars: int = 3_000_000, validation_fraction: float = 0.05,
                   max_documents: int | None = None, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """DatasetDict(train=..., validation=...) of documents with a "text" column, and a description of the data.

    The source: a `datasets` dataset by name, local files (read_documents), or else the embedded standard-library
    corpus. Without a validation split, `validation_fraction` of the documents is held out (whole documents).
    """
    from datasets import Dataset, DatasetDict, load_dataset

    if dataset_name and train_files:
        raise ValueError("Give either a dataset name or training files, not both.")
    if validation_files and not train_files:
        raise ValueError("Validation files need training files (--train_files).")
    if dataset_name:
        raw = load_dataset(dataset_name, dataset_config_name)
        if "train" not in raw:
            raise ValueError(f"The dataset {dataset_name} has no 'train' split (splits: {list(raw)}).")
        raw = DatasetDict({name: text_column_only(split, text_column) for name, split in raw.items()})
        info = {"hub_id": dataset_name, "description": f"The Hub dataset `{dataset_name}`"
                + (f" ({dataset_config_name})" if dataset_config_name else "") + "."}
    elif train_files:
        raw = DatasetDict(train=read_documents(train_files, text_column))
        if validation_files:
            raw["validation"] = read_documents(validation_files, text_column)
        info = {"description": f"Local files: {', '.join(Path(f).name for f in train_files)}."}
    else:
        raw = DatasetDict(train=Dataset.from_list(stdlib_corpus(max_corpus_chars)).select_columns(["text"]))
        info = {"description": f"Source files (.py) of the Python {sysconfig.get_python_version()} standard library "
                               "that ship with the interpreter (no download); whole files are held out for "
                               "evaluation."}
    validation_name = next((s for s in ("validation", "valid", "test") if s in raw), None)
    train = raw["train"]
    if validation_name is None:
        if not 0 < validation_fraction < 1:
            raise ValueError(f"--validation_fraction must be in (0, 1), got {validation_fraction}.")
        if len(train) < 2:
            raise ValueError("Need at least 2 documents to hold one out; give more data or validation files.")
        split = train.train_test_split(test_size=validation_fraction, seed=seed)
        train, validation = split["train"], split["test"]
    else:
        validation = raw[validation_name]
    if max_documents is not None:
        train = train.select(range(min(max_documents, len(train))))
    docs = DatasetDict(train=train, validation=validation)
    info.update({"training documents": len(docs["train"]), "held-out documents": len(docs["validation"]),
                 "training characters": sum(len(t) for t in docs["train"]["text"])})
    return docs, info


# ---------------------------------------------------------------------------------------------------- tokenizers
def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096):
    """A byte-level BPE (every byte is representable: no unknown tokens) trained on `texts`, with an
    end-of-text token (bos = eos) and a pad token, wrapped as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 258 + 2:
        raise ValueError(f"tokenizer_vocab_size must be at least 260 (256 bytes + specials), got {vocab_size}.")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN, PAD_TOKEN], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN,
                                   pad_token=PAD_TOKEN)


def check_model_folder(folder) -> Path:
    """`folder` as a Path when it holds a saved model (config.json); otherwise a FileNotFoundError saying what it is,
    e.g. a LoRA adapter folder (finetune.py writes the adapter to OUT/adapter and the merged model to OUT)."""
    folder = Path(os.fspath(folder))
    if (folder / "config.json").is_file():
        return folder
    if (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} holds a LoRA adapter, not a model: use the merged model finetune.py saved beside it "
            f"({str(folder.parent)!r}, unless it ran with --merge false), or merge it yourself: "
            "PeftModel.from_pretrained(base_model, folder).merge_and_unload().save_pretrained(...).")
    raise FileNotFoundError(f"{str(folder)!r} is not a saved model folder (no config.json).")


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


# ---------------------------------------------------------------------------------------------------- packing
def pack_documents(documents, tokenizer, block_size: int, what: str = "the data", boundaries: bool = True):
    """Tokenize, end every document with eos, concatenate and cut into blocks of `block_size` tokens.

    Columns: input_ids, labels, and with `boundaries` (the default) position_ids that restart at 0 at the first
    token of every document (and at each block's start): the model starts every document from the zero state, as
    if it were alone, so no state flows from one document into the next, and the first token of a document,
    which nothing before it in the block could predict, has label -100. Without `boundaries`: labels are the ids
    and documents run into each other. Documents are concatenated in groups of 2000 (memory stays bounded on
    large corpora); each group's tail that does not fill a block is dropped. Text too short for one block is an
    error naming `what`."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("The tokenizer has no eos token; packing needs one to separate documents.")

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [x + [eos] for x in ids]}

    def group(batch):
        ids = list(chain.from_iterable(batch["input_ids"]))
        n = len(ids) // block_size * block_size
        blocks = [ids[i: i + block_size] for i in range(0, n, block_size)]
        if not boundaries:
            return {"input_ids": blocks, "labels": [list(b) for b in blocks]}
        ids = np.asarray(blocks, dtype=np.int64).reshape(len(blocks), block_size)
        starts = np.zeros_like(ids, dtype=bool)
        starts[:, 0] = True
        starts[:, 1:] = ids[:, :-1] == eos  # the token after an eos starts a document
        steps = np.broadcast_to(np.arange(block_size), ids.shape)
        positions = steps - np.maximum.accumulate(np.where(starts, steps, 0), axis=1)
        labels = np.where(starts & (steps > 0), -100, ids)
        return {"input_ids": blocks, "labels": labels.tolist(), "position_ids": positions.tolist()}

    tokenized = documents.map(tokenize, batched=True, remove_columns=documents.column_names)
    blocks = tokenized.map(group, batched=True, batch_size=2000)
    if len(blocks) == 0:
        raise ValueError(f"Not enough text for one block of {block_size} tokens in {what}; give more text or a "
                         "smaller block size (--block_size).")
    return blocks
