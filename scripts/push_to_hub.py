"""Upload a saved hf_xlstm folder (e.g. the output of scripts/pretrain.py) to the Hugging Face Hub.

    python scripts/push_to_hub.py outputs/xlstm-tiny-stdlib --repo-id you/xlstm-tiny-stdlib --dry-run
    python scripts/push_to_hub.py outputs/xlstm-tiny-stdlib --repo-id you/xlstm-tiny-stdlib [--private]

The folder is staged first: its top-level files except pickles (training_args.bin, *.pt, *.pth, *.ckpt) and
hidden files, without subfolders (checkpoint-*, runs/), and the model card is written again for the repo id
from the template in model_cards/ (keeping the training, data and evaluation facts stored with the folder).
--dry-run stops there and lists the staged files: exactly what an upload sends. An upload creates the repo
(if needed), asks the Hub to validate the card's metadata, and uploads the staged folder in one commit. The staging
folder is a temporary one, removed at the end, unless --staging-dir names one to keep (to look at the card).
The work is done by hf_xlstm.hub.push.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_xlstm.cli import run
from hf_xlstm.hub import COMMIT_MESSAGE, push


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
    parser.add_argument("--commit-message", default=COMMIT_MESSAGE)
    parser.add_argument("--token", default=None, help="Hub token (default: the saved login / HF_TOKEN)")
    args = parser.parse_args(argv)
    if args.repo_id.count("/") > 1 or not args.repo_id.strip("/"):
        parser.error(f"--repo-id must look like 'user/name', got {args.repo_id!r}")

    push(args.folder, args.repo_id, staging_dir=args.staging_dir, dry_run=args.dry_run, private=args.private,
         revision=args.revision, commit_message=args.commit_message, token=args.token)
    if args.staging_dir is not None:
        print(f"staged files kept in {args.staging_dir}")
    return 0


if __name__ == "__main__":
    run(main)
