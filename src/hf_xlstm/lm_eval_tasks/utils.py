"""Loaded by lm-eval (by file path) for the `!function` entries of the task YAMLs in this folder; the code lives
in hf_xlstm.evaluation."""

from hf_xlstm.evaluation import assoc_recall_dataset, heldout_dataset, last_word_dataset

__all__ = ["assoc_recall_dataset", "heldout_dataset", "last_word_dataset"]
