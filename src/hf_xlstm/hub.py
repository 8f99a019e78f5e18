"""Putting a saved hf_xlstm folder (e.g. the output of scripts/pretrain.py) on the Hugging Face Hub.

An upload never sends the folder as it is. It is staged first: its top-level files are copied into a staging
folder, leaving out pickles (training_args.bin, *.pt, *.pth, *.ckpt, *.pkl), hidden files and every subfolder
(checkpoint-*, runs/), and the model card is written again there for the repo id with
hf_xlstm.model_card.write_model_card, from the facts the folder keeps in model_card.json (training, data,
every evaluation result). What lies in the staging folder is exactly what an upload sends.

    from hf_xlstm.hub import push
    push("outputs/xlstm-tiny-stdlib", "you/xlstm-tiny-stdlib", dry_run=True)   # stage and list, upload nothing
    push("outputs/xlstm-tiny-stdlib", "you/xlstm-tiny-stdlib")                 # stage, then upload in one commit

scripts/push_to_hub.py is the command line for `push`.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import tempfile
from pathlib import Path

from .model_card import validate_model_card, write_model_card

# what stays home: pickles (the Hub flags them and from_pretrained does not need them) and hidden files
SKIP = ("training_args.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", ".*")
# besides weights and the model code named in config.json's auto_map: what loading with transformers alone needs
REQUIRED = ("config.json", "tokenizer_config.json", "generation_config.json")
COMMIT_MESSAGE = "Upload xLSTM model (hf_xlstm)"


def upload_files(folder: str | Path) -> list[Path]:
    """The files of `folder` that belong on the Hub (sorted)."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and not any(fnmatch.fnmatch(p.name, pattern) for pattern in SKIP))


def check_folder(folder: str | Path) -> None:
    """Raise a ValueError naming what is missing for a loadable trust_remote_code model."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; give the output folder of scripts/pretrain.py.")
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if not list(folder.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    if (folder / "config.json").is_file():
        auto_map = json.loads((folder / "config.json").read_text()).get("auto_map", {})
        if not auto_map:
            missing.append("auto_map in config.json")
        for target in auto_map.values():
            module = target.split(".")[0] + ".py"
            if not (folder / module).is_file():
                missing.append(module)
    if missing:
        raise ValueError(f"{folder} is not a Hub-ready hf_xlstm folder: missing {', '.join(missing)}. Save the model "
                         "with save_pretrained (or run scripts/pretrain.py) and the tokenizer beside it.")


def stage(folder: str | Path, destination: str | Path, repo_id: str) -> list[Path]:
    """Copy the files to upload into `destination` (new or empty) and write the model card for `repo_id` there;
    returns the staged files."""
    folder, destination = Path(folder), Path(destination)
    check_folder(folder)
    if destination.exists() and any(destination.iterdir()):
        raise ValueError(f"Staging folder {destination} is not empty; give an empty or new folder.")
    destination.mkdir(parents=True, exist_ok=True)
    for path in upload_files(folder):
        shutil.copy2(path, destination / path.name)
    write_model_card(destination, repo_id=repo_id)  # validates the card it writes
    return upload_files(destination)


def push(folder: str | Path, repo_id: str, *, staging_dir: str | Path | None = None, dry_run: bool = False,
         private: bool = False, revision: str | None = None, commit_message: str = COMMIT_MESSAGE,
         token: str | None = None) -> str | None:
    """Stage `folder` for `repo_id`, print the staged files and, unless `dry_run`, upload them in one commit.

    Args:
        folder: the saved model folder (config.json with auto_map, the model code, safetensors, tokenizer).
        repo_id: the Hub repo, "user/name" or "org/name"; created (with `private`) if it does not exist.
        staging_dir: stage into this new or empty folder and keep it; default: a temporary folder, removed at
            the end.
        dry_run: stop after staging and listing.
        revision: the branch to upload to (created if needed); default: main.
        token: Hub token; default: the saved login or HF_TOKEN.

    Before uploading, the Hub's validation endpoint checks the card's metadata. Returns the repo URL, or None for a
    dry run.
    """
    if staging_dir is None:
        with tempfile.TemporaryDirectory(prefix="hf_xlstm_upload_") as staging:
            return push(folder, repo_id, staging_dir=staging, dry_run=dry_run, private=private, revision=revision,
                        commit_message=commit_message, token=token)
    destination = Path(staging_dir)
    files = stage(folder, destination, repo_id)
    total = sum(p.stat().st_size for p in files)
    print(f"{'would upload' if dry_run else 'uploading'} {len(files)} files ({total / 1e6:.2f} MB) to "
          f"https://huggingface.co/{repo_id}:")
    for path in files:
        print(f"  {path.stat().st_size:>12,d}  {path.name}")
    if dry_run:
        return None

    from huggingface_hub import HfApi

    validate_model_card(destination, online=True)
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    api.upload_folder(folder_path=str(destination), repo_id=repo_id, repo_type="model", revision=revision,
                      commit_message=commit_message)
    print(f"uploaded: {url}")
    return str(url)
