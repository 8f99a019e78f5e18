"""Checkpoint folders and the Hub: reading weight files (single, sharded, torch), the one list of Hub download
arguments, converting whole folders into Hub-ready hf_xlstm folders (weights, tokenizer files, model card) and
back, and the on-the-fly conversion behind xLSTMForCausalLM.from_pretrained."""

from __future__ import annotations

import inspect
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..configuration_xlstm import xLSTMConfig
from .mapping import ConversionError, large_weight_mode
from .official_format import config_from_official, official_kind, state_dict_from_official
from .transformers_format import (
    TRANSFORMERS_MODEL_TYPE,
    config_from_transformers,
    config_to_transformers,
    state_dict_from_transformers,
    state_dict_to_transformers,
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json")
# from_pretrained's keyword arguments that say where and how to fetch from the Hub
HUB_ARGUMENTS = ("revision", "cache_dir", "token", "local_files_only", "force_download", "subfolder")


def _hub_arguments(kwargs: Mapping[str, Any] | None, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """The Hub arguments given in kwargs (None values are not given)."""
    return {k: v for k, v in (kwargs or {}).items() if k in HUB_ARGUMENTS and k not in leave_out and v is not None}


# ---------------------------------------------------------------------------------------------------- reading
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path} is not valid JSON: {err}.") from None


def _weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files: single or sharded safetensors (index or model_{n} shards), or torch files."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            files = sorted(set(_read_json(index).get("weight_map", {}).values()))
            missing = [f for f in files if not (folder / f).is_file()]
            if missing:
                raise ConversionError(f"{index} names shards that are not in {folder}: {missing}.")
            return [folder / f for f in files]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    shards = sorted(folder.glob("model_*.safetensors"), key=lambda p: int(p.stem.split("_")[-1])
                    if p.stem.split("_")[-1].isdigit() else -1)
    if shards:
        return shards
    others = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth"))
    if others:
        return others
    raise ConversionError(f"no weights in {folder}: expected model.safetensors, a sharded "
                          "model.safetensors.index.json, "
                          "model_<n>.safetensors shards, pytorch_model.bin or a .pt file.")


def _load_weights(files: list[Path], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All tensors of the files, cast to dtype (if given) one by one, so the peak is one source tensor."""
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    tensor = f.get_tensor(key)
                    state[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        else:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
            if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
                loaded = loaded["state_dict"]
            if not isinstance(loaded, Mapping):
                raise ConversionError(f"{file} does not hold a state dict.")
            for key, tensor in loaded.items():
                state[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    return state


def load_transformers_checkpoint(folder: str | os.PathLike, dtype: torch.dtype | None = None,
                                 ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json dict, state dict) of a folder saved by transformers' xLSTMForCausalLM."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ConversionError(f"{folder} has no config.json.")
    config = _read_json(folder / "config.json")
    if config.get("model_type") != TRANSFORMERS_MODEL_TYPE:
        raise ConversionError(f"{folder / 'config.json'} has model_type {config.get('model_type')!r}; expected "
                              "transformers' built-in 'xlstm'.")
    return config, _load_weights(_weight_files(folder), dtype)


def load_official_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config dict, state dict) of an official-package checkpoint folder: config.yaml or config.json (the
    model config, possibly under a top-level "model" key) and model.safetensors, model_<n>.safetensors shards or a
    torch state-dict file."""
    folder = Path(folder)
    if (folder / "config.yaml").is_file():
        import yaml

        config = yaml.safe_load((folder / "config.yaml").read_text())
    elif (folder / "config.json").is_file():
        config = _read_json(folder / "config.json")
    else:
        raise ConversionError(f"{folder} has no config.yaml or config.json with the official model config.")
    if not isinstance(config, Mapping):
        raise ConversionError(f"the config in {folder} is not a mapping.")
    return dict(config), _load_weights(_weight_files(folder))


# ---------------------------------------------------------------------------------------------------- writing
def _copy_tokenizer(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


def _model_from(config: xLSTMConfig, state_dict: Mapping[str, torch.Tensor]):
    from ..modeling_xlstm import xLSTMForCausalLM

    with torch.device("meta"):
        model = xLSTMForCausalLM(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def _write_folder(model, dst: Path, source: str, source_folder: Path | None, description: str) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    copied = _copy_tokenizer(source_folder, dst) if source_folder is not None else []
    _write_card(dst, model.config, source, description, copied)
    return dst


def _write_card(dst: Path, config: xLSTMConfig, source: str, description: str, tokenizer_files: list[str]) -> None:
    tokenizer = [f for f in tokenizer_files if f != "generation_config.json"]
    facts = {"description": description, "converted with": "hf_xlstm.conversion (scripts/convert_checkpoint.py)",
             "tokenizer": "copied from the source" if tokenizer else "none in the source folder",
             "license": "the source's license applies to the converted weights"}
    repo_id = source if _looks_like_hub_id(source) else None
    source_info = {"repo_id": repo_id, **facts} if repo_id else {"url": source, **facts}
    try:
        from ..model_card import write_model_card

        write_model_card(dst, config=config, source=source_info, license="other")
    except (ImportError, FileNotFoundError):
        # The template ships with a source checkout; without it, a minimal card that still names the source.
        (dst / "README.md").write_text(
            "---\nlicense: other\nlibrary_name: transformers\npipeline_tag: text-generation\n"
            "tags:\n- xlstm\n- hf_xlstm\n"
            + (f"base_model: {repo_id}\n" if repo_id else "") + "---\n\n"
            f"# {dst.name}\n\nConverted from `{source}` to the hf_xlstm format. {description}\n")


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not Path(name).exists() and not name.startswith((".", "/", "~"))


def convert_transformers_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, source_name: str | None = None,
                                    dtype: torch.dtype | None = None) -> Path:
    """Convert a folder saved by transformers' xLSTMForCausalLM (single or fused weights, sharded or not) into a
    Hub-ready hf_xlstm folder at dst: config (with auto_map), safetensors, model code, tokenizer files when the
    source has them, and a model card naming the source. source_name: what the card and `converted_from` call the
    source (e.g. its Hub id); default: the folder path."""
    src, dst = Path(src), Path(dst)
    tconfig, tsd = load_transformers_checkpoint(src, dtype)
    source = source_name or str(src)
    config = config_from_transformers(tconfig, converted_from=f"transformers xLSTMForCausalLM: {source}")
    model = _model_from(config, state_dict_from_transformers(tsd, tconfig, config))
    mode = large_weight_mode(tsd, tconfig)
    return _write_folder(model, dst, source, src, f"Source format: transformers' built-in xLSTM (model_type 'xlstm', "
                                                  f"weight_mode '{mode}').")


def convert_official_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, source_name: str | None = None,
                                ) -> Path:
    """Convert an official `xlstm` package checkpoint folder (see load_official_checkpoint) into a Hub-ready
    hf_xlstm folder at dst."""
    src, dst = Path(src), Path(dst)
    oconfig, osd = load_official_checkpoint(src)
    kind = "xLSTMLarge" if official_kind(oconfig) == "large" else "xLSTMLMModel"
    source = source_name or str(src)
    config = config_from_official(oconfig, converted_from=f"xlstm package {kind}: {source}")
    model = _model_from(config, state_dict_from_official(osd, oconfig, config))
    return _write_folder(model, dst, source, src, f"Source format: the official xlstm package's {kind}.")


def save_as_transformers(model, dst: str | os.PathLike, weight_mode: str = "single") -> Path:
    """Write an hf_xlstm block_style="large" model as a folder for transformers' built-in xLSTMForCausalLM."""
    from safetensors.torch import save_file

    from ..modeling_xlstm import give_weights_the_folder_mode

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    tconfig = config_to_transformers(model.config, weight_mode)
    tconfig.architectures = ["xLSTMForCausalLM"]  # as transformers writes it; vLLM reads it
    state = state_dict_to_transformers(model.state_dict(), model.config, weight_mode)
    if model.config.tie_word_embeddings:  # stored as its own tensor: transformers' xLSTM does not tie
        state["lm_head.weight"] = state["lm_head.weight"].clone()
    tconfig.save_pretrained(dst)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
    give_weights_the_folder_mode(dst)
    return dst


# ---------------------------------------------------------------------------------------------------- the Hub
def hub_checkpoint_folder(name: str, hub_kwargs: Mapping[str, Any] | None = None) -> Path:
    """A local folder with the config, weights and tokenizer files of a Hub repo (downloaded or cached)."""
    from huggingface_hub import snapshot_download

    if not _looks_like_hub_id(name):  # a local path that is not there: say so, not how Hub ids are spelled
        what = "is not a folder" if Path(name).exists() else "does not exist"
        raise FileNotFoundError(f"Source folder {name!r} {what}, and it is not a Hub model id ('owner/name'); "
                                "give the checkpoint's folder or its Hub id.")
    allowed = ["*config.json", "*.safetensors", "*model.safetensors.index.json", *(f"*{f}" for f in TOKENIZER_FILES)]
    # the whole snapshot is fetched (the patterns match in subfolders too); the caller picks the subfolder in it
    return Path(snapshot_download(name, allow_patterns=allowed, **_hub_arguments(hub_kwargs, leave_out=("subfolder",))))


def transformers_config_dict(name_or_path: str | os.PathLike, hub_kwargs: Mapping[str, Any] | None = None,
                             ) -> dict[str, Any] | None:
    """config.json of a local folder or Hub repo as a dict, or None if there is none to read."""
    path = Path(name_or_path)
    if path.is_dir():
        return _read_json(path / "config.json") if (path / "config.json").is_file() else None
    try:
        from transformers.utils import cached_file

        file = cached_file(str(name_or_path), "config.json", _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False, **_hub_arguments(hub_kwargs))
    except (OSError, ValueError):
        return None
    return _read_json(Path(file)) if file else None


def prepare_transformers_checkpoint(name_or_path: str | os.PathLike, kwargs: dict[str, Any],
                                    ) -> tuple[xLSTMConfig, dict[str, torch.Tensor]] | None:
    """For xLSTMForCausalLM.from_pretrained: if `name_or_path` (a local folder or a Hub repo) is in transformers'
    built-in xLSTM format, read and convert it in memory and return (hf_xlstm config, state dict); else None.

    `kwargs` are from_pretrained's keyword arguments; this pops the hub arguments it used and the hf_xlstm config
    fields given there (e.g. backend="native"), which go into the converted config. A torch dtype in kwargs
    ("dtype" or "torch_dtype") is applied while reading, tensor by tensor, so a float32 checkpoint loaded in
    bfloat16 never sits in memory in float32 as a whole.
    """
    tconfig = transformers_config_dict(name_or_path, kwargs)
    if tconfig is None or tconfig.get("model_type") != TRANSFORMERS_MODEL_TYPE:
        return None
    if kwargs.get("config") is not None:
        raise ConversionError(f"{name_or_path} is in transformers' built-in xLSTM format and is converted with its own "
                              "config; pass hf_xlstm config fields as keyword arguments instead of config=.")
    path = Path(name_or_path)
    folder = (path if path.is_dir() else hub_checkpoint_folder(str(name_or_path), kwargs)) / kwargs.get("subfolder", "")
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    tconfig, tsd = load_transformers_checkpoint(folder, dtype if isinstance(dtype, torch.dtype) else None)
    fields = set(inspect.signature(xLSTMConfig.__init__).parameters) - {"self", "kwargs"}
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
    config = config_from_transformers(tconfig, **{"converted_from": f"transformers xLSTMForCausalLM: {name_or_path}",
                                                  **overrides})
    state = state_dict_from_transformers(tsd, tconfig, config)
    del tsd
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    for key in (*HUB_ARGUMENTS, "config"):
        kwargs.pop(key, None)
    return config, state
