"""Convert an existing xLSTM checkpoint into a Hub-ready hf_xlstm folder.

    python scripts/convert_checkpoint.py --from transformers path/to/xLSTM-7b  xlstm-7b-hf
    python scripts/convert_checkpoint.py --from transformers NX-AI/xLSTM-7b  xlstm-7b-hf      # Hub id (online)
    python scripts/convert_checkpoint.py --from xlstm  path/to/official-ckpt  my-xlstm-hf

--from transformers: a folder saved by transformers' built-in xLSTMForCausalLM (model_type "xlstm": config.json
and model.safetensors, sharded or not, single or fused weights). --from xlstm: a checkpoint of the official xlstm
package: config.yaml (or config.json) with the xLSTMLMModel / xLSTMLarge config, possibly under a "model" key,
and model.safetensors, model_<n>.safetensors shards or a torch state-dict file. The output folder holds the
config, safetensors weights, the model code (trust_remote_code), the tokenizer files when the source has them,
and a model card naming the source. --to-transformers SRC DST goes the other way for an hf_xlstm "large" model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hf_xlstm.cli import run
from hf_xlstm.conversion import (
    convert_official_checkpoint,
    convert_transformers_checkpoint,
    hub_checkpoint_folder,
    save_as_transformers,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", choices=("transformers", "xlstm"),
                        help="format of SRC: transformers' built-in xLSTM, or the official xlstm package")
    parser.add_argument("--to-transformers", action="store_true",
                        help="instead: write the hf_xlstm model at SRC in transformers' built-in xLSTM format")
    parser.add_argument("--weight-mode", choices=("single", "fused"), default="single",
                        help="with --to-transformers: transformers' weight layout (default single)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                        help="with --from transformers: cast the weights while reading (default: as stored)")
    parser.add_argument("--name", default=None, help="how the model card names the source (default: SRC)")
    parser.add_argument("src", help="source folder (or, except with --from xlstm, a Hub model id)")
    parser.add_argument("dst", help="output folder")
    args = parser.parse_args(argv)

    if not args.to_transformers and args.source is None:
        parser.error("give --from transformers, --from xlstm or --to-transformers")
    src = args.src
    if not Path(src).is_dir():
        if args.source == "xlstm" and not args.to_transformers:
            raise FileNotFoundError(f"Source folder {src!r} does not exist; --from xlstm converts a local "
                                    "checkpoint folder (config.yaml or config.json and the weights).")
        args.name = args.name or src  # a Hub id: config, weights and tokenizer are fetched (or taken from the cache)
        src = hub_checkpoint_folder(src, {})
    if args.to_transformers:
        from hf_xlstm import xLSTMForCausalLM

        out = save_as_transformers(xLSTMForCausalLM.from_pretrained(src), args.dst, args.weight_mode)
    elif args.source == "transformers":
        out = convert_transformers_checkpoint(src, args.dst, source_name=args.name,
                                              dtype=DTYPES[args.dtype] if args.dtype else None)
    else:
        out = convert_official_checkpoint(src, args.dst, source_name=args.name)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run(main)
