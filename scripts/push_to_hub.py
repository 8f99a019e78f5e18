"""Upload a saved hf_xlstm folder (e.g. the output of scripts/pretrain.py) to the Hugging Face Hub.

    python scripts/push_to_hub.py outputs/xlstm-tiny-stdlib --repo-id you/xlstm-tiny-stdlib --dry-run
    python scripts/push_to_hub.py outputs/xlstm-tiny-stdlib --repo-id you/xlstm-tiny-stdlib [--private]

The folder is staged first: its top-level files except pickles (training_args.bin, *.pt, *.pth, *.ckpt) and
hidden files, without subfolders (checkpoint-*, runs/), and the model card is written again for the repo id
from the template in model_cards/ (keeping the training, data and evaluation facts stored with the folder).
--dry-run stops there and lists the staged files: exactly what an upload sends. An upload creates the repo
(if needed), asks the Hub to validate the card's metadata, and uploads the staged folder in one commit. The staging
folder is a temporary one, removed at the end, unless --staging-dir names one to keep (to look at the card).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import tempfile
from pathlib import Path

from hf_xlstm.cli import run
from hf_xlstm.model_card import validate_model_card, write_model_card

SKIP = ("training_args.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", ".*")
REQUIRED = ("config.json", "tokenizer_config.json", "generation_config.json")


def upload_files(folder: Path) -> list[Path]:
    """The files of `folder` that belong on the Hub (sorted)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not any(fnmatch.fnmatch(p.name, pattern) for pattern in SKIP))


def check_folder(folder: Path) -> None:
    """Raise a ValueError naming what is missing for a loadable trust_remote_code model."""
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


def stage(folder: Path, destination: Path, repo_id: str) -> list[Path]:
    """Copy the files to upload into `destination` and write the model card for `repo_id` there."""
    check_folder(folder)
    if destination.exists() and any(destination.iterdir()):
        raise ValueError(f"Staging folder {destination} is not empty; give an empty or new folder.")
    destination.mkdir(parents=True, exist_ok=True)
    for path in upload_files(folder):
        shutil.copy2(path, destination / path.name)
    write_model_card(destination, repo_id=repo_id)
    validate_model_card(destination)
    return upload_files(destination)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the saved model folder")
    parser.add_argument("--repo-id", required=True, help="the Hub repo, 'user/name' or 'org/name'")
    parser.add_argument("--dry-run", action="store_true", help="stage and list the files, upload nothing")
    parser.add_argument("--staging-dir", "--stage", type=Path, default=None,
                        help="stage into this (new or empty) folder and keep it (default: a temporary folder, "
                             "removed at the end)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", default=None, help="branch to upload to (default: main)")
    parser.add_argument("--commit-message", default="Upload xLSTM model (hf_xlstm)")
    parser.add_argument("--token", default=None, help="Hub token (default: the saved login / HF_TOKEN)")
    args = parser.parse_args(argv)
    if args.repo_id.count("/") > 1 or not args.repo_id.strip("/"):
        parser.error(f"--repo-id must look like 'user/name', got {args.repo_id!r}")

    if args.staging_dir is not None:
        push(args, args.staging_dir)
        print(f"staged files kept in {args.staging_dir}")
    else:
        with tempfile.TemporaryDirectory(prefix="hf_xlstm_upload_") as staging:
            push(args, Path(staging))
    return 0


def push(args: argparse.Namespace, destination: Path) -> None:
    """Stage into `destination`, list the files and, unless --dry-run, upload them."""
    files = stage(args.folder, destination, args.repo_id)
    total = sum(p.stat().st_size for p in files)
    print(f"{'would upload' if args.dry_run else 'uploading'} {len(files)} files ({total / 1e6:.2f} MB) to "
          f"https://huggingface.co/{args.repo_id}:")
    for path in files:
        print(f"  {path.stat().st_size:>12,d}  {path.name}")
    if args.dry_run:
        return

    from huggingface_hub import HfApi

    validate_model_card(destination, online=True)
    api = HfApi(token=args.token)
    url = api.create_repo(args.repo_id, private=args.private, exist_ok=True, repo_type="model")
    if args.revision:
        api.create_branch(args.repo_id, branch=args.revision, exist_ok=True)
    api.upload_folder(folder_path=str(destination), repo_id=args.repo_id, repo_type="model",
                      revision=args.revision, commit_message=args.commit_message)
    print(f"uploaded: {url}")


if __name__ == "__main__":
    run(main)
