"""lm-eval task configs shipped with hf_xlstm (point lm-eval's include_path at this folder; see
hf_xlstm.evaluation). `utils.py` is the module the YAML files name in `!function`."""
