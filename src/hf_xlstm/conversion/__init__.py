"""Bring existing xLSTM checkpoints into hf_xlstm, and take mLSTM-only models back.

Two sources exist today:

* transformers' built-in `xlstm` model (model_type "xlstm", the format xLSTM-7B is published in): an xLSTM-7B
  block stack, parameters in "single" mode (separate q/k/v/o and gate projections) or "fused" mode (one q|k|v|o
  projection, one i|f gate projection, one gate|up FFN projection). It maps onto block_style="large", and back.
* the official `xlstm` package: its paper model `xLSTMLMModel` (mLSTM and sLSTM blocks, any `slstm_at`) maps onto
  block_style="paper"; its `xLSTMLarge` (the 7B architecture) onto block_style="large".

Everything is a pure function of (config, state dict) -> (config, state dict), plus folder-level wrappers that read
and write checkpoints. Nothing imports the `xlstm` package: conversion works from the checkpoint alone.

Modules:
* mapping: ConversionError, the checked key-by-key mapper, widths and their rounding, the xLSTM-7B block table
  (shared by transformers' xLSTM and xLSTMLarge) and its weight-mode detection;
* transformers_format: transformers' built-in xLSTM to and from hf_xlstm;
* official_format: the official package's xLSTMLMModel and xLSTMLarge to hf_xlstm (its traps and numerics there);
* folders: weight files, Hub downloads, whole-folder conversion and the on-the-fly conversion of from_pretrained.
"""

from .folders import (
    TOKENIZER_FILES,
    convert_official_checkpoint,
    convert_transformers_checkpoint,
    hub_checkpoint_folder,
    load_official_checkpoint,
    load_transformers_checkpoint,
    prepare_transformers_checkpoint,
    save_as_transformers,
    transformers_config_dict,
)
from .mapping import ConversionError, expected_shapes
from .official_format import config_from_official, official_kind, state_dict_from_official
from .transformers_format import (
    TRANSFORMERS_MODEL_TYPE,
    config_from_transformers,
    config_to_transformers,
    state_dict_from_transformers,
    state_dict_to_transformers,
)

__all__ = [
    "ConversionError",
    "config_from_transformers",
    "state_dict_from_transformers",
    "config_to_transformers",
    "state_dict_to_transformers",
    "config_from_official",
    "state_dict_from_official",
    "load_transformers_checkpoint",
    "convert_transformers_checkpoint",
    "convert_official_checkpoint",
    "save_as_transformers",
    "hub_checkpoint_folder",
    "prepare_transformers_checkpoint",
]
