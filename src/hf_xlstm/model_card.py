"""Model cards for saved hf_xlstm folders: the template in model_cards/ filled from the config, the training data
and arguments, the evaluation results and (for converted checkpoints) the source, with model-index metadata that
the Hub accepts.

`write_model_card` is the one way a card is written: pretraining, conversion, the lm-eval evaluation
(hf_xlstm.evaluation.evaluate_folder) and Hub staging (hf_xlstm.hub) each call it with what they know; it keeps
every call's inputs in the folder's model_card.json and renders README.md from all of them.

    from hf_xlstm.model_card import write_model_card, validate_model_card
    card = write_model_card("my-xlstm", training={"max_steps": 300}, dataset={"name": "python-stdlib"},
                            eval_results=[{"task_type": "text-generation", "dataset_type": "python-stdlib",
                                           "dataset_name": "Python stdlib", "dataset_split": "validation",
                                           "metric_type": "perplexity", "metric_value": 12.3}])
    validate_model_card("my-xlstm")            # offline: metadata and model-index parse strictly
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results

TEMPLATE_NAME = "xlstm_model_card.md"
STORED_INPUTS = "model_card.json"
RESULT_KEY = ("task_type", "task_name", "dataset_type", "dataset_config", "dataset_split", "metric_type",
              "metric_name")
EVAL_REQUIRED = ("task_type", "dataset_type", "dataset_name", "metric_type", "metric_value")
CARD_TAGS = ["xlstm", "hf_xlstm", "recurrent", "mlstm", "custom_code"]
DEFAULT_LIMITATIONS = (
    "A language model predicts likely text; it states falsehoods fluently and reflects its training data. "
    "Small models trained briefly (such as the default pretraining run of hf_xlstm) are demonstrations, not "
    "assistants."
)


def template_path() -> Path:
    """The default template, model_cards/xlstm_model_card.md, shipped inside the package (hf_xlstm/model_cards)."""
    path = Path(__file__).resolve().parent / "model_cards" / TEMPLATE_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"Model card template {TEMPLATE_NAME} not found in {path.parent}. Reinstall hf_xlstm (its wheel ships "
            "the template) or pass template=<path to a Jinja model card template>."
        )
    return path


def _config_dict(folder: Path, config) -> dict[str, Any]:
    if config is None:
        path = folder / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"No config given and no {path}: save the model first or pass config=.")
        return json.loads(path.read_text())
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    raise TypeError(f"config must be an xLSTMConfig, a dict or None, got {type(config).__name__}.")


def count_parameters(folder: str | Path) -> int | None:
    """Parameters stored in the folder's safetensors files (headers only; nothing is loaded). None if none."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                total += math.prod(f.get_slice(name).get_shape())
    return total


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}".replace(".00", "")
    return str(n)


def _architecture(cfg: Mapping[str, Any], num_parameters: int | None) -> list[tuple[str, str]]:
    style = cfg.get("block_style", "paper")
    num_blocks = cfg.get("num_blocks")
    slstm_at = list(cfg.get("slstm_at") or [])
    rows = []
    if num_parameters:
        rows.append(("parameters", f"{_human(num_parameters)} ({num_parameters:,})"))
    if style == "large":
        rows.append(("block style", "xLSTM-7B (mLSTM blocks with SwiGLU feed-forward)"))
    else:
        ratio = f"xLSTM[{num_blocks - len(slstm_at)}:{len(slstm_at)}]" if num_blocks else "xLSTM"
        rows.append(("block style", f"paper, {ratio} (mLSTM:sLSTM blocks)"))
        rows.append(("sLSTM blocks at", ", ".join(map(str, slstm_at)) if slstm_at else "none"))
    for key in ("num_blocks", "hidden_size", "num_heads", "vocab_size", "chunk_size", "output_logit_soft_cap",
                "tie_word_embeddings"):
        if key in cfg:
            rows.append((key, str(cfg[key])))
    if "torch_dtype" in cfg or "dtype" in cfg:
        rows.append(("dtype", str(cfg.get("dtype") or cfg.get("torch_dtype"))))
    return rows


def _eval_result(entry) -> EvalResult:
    if isinstance(entry, EvalResult):
        return entry
    if not isinstance(entry, Mapping):
        raise TypeError(f"eval_results entries must be dicts or huggingface_hub.EvalResult, got {type(entry).__name__}.")
    missing = [k for k in EVAL_REQUIRED if entry.get(k) is None]
    if missing:
        raise ValueError(f"eval_results entry {dict(entry)} lacks {missing}; required keys: {list(EVAL_REQUIRED)}.")
    value = entry["metric_value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"eval_results metric_value must be a finite number, got {value!r} in {dict(entry)}.")
    known = set(EvalResult.__dataclass_fields__)
    unknown = set(entry) - known
    if unknown:
        raise ValueError(f"eval_results entry has unknown keys {sorted(unknown)}; allowed: {sorted(known)}.")
    return EvalResult(**{**entry, "metric_value": float(value)})


def _eval_dict(entry) -> dict[str, Any]:
    result = _eval_result(entry)
    return {k: v for k, v in dataclasses.asdict(result).items() if v is not None}


def _merge_results(old: list[dict], new: list[dict]) -> list[dict]:
    key = lambda e: tuple(e.get(k) for k in RESULT_KEY)  # noqa: E731
    merged = {key(e): e for e in old}
    merged.update({key(e): e for e in new})
    return list(merged.values())


def _format_value(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) if value else "-"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ")


def _text(value, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        lines = [str(value["description"])] if value.get("description") else []
        lines += [f"- {k}: {_format_value(v)}" for k, v in value.items() if k != "description"]
        return "\n".join(lines)
    raise TypeError(f"{what} must be a str or a dict, got {type(value).__name__}.")


def write_model_card(
    folder: str | Path,
    *,
    config=None,
    training: Mapping[str, Any] | None = None,
    dataset: str | Mapping[str, Any] | None = None,
    eval_results: Sequence[Mapping[str, Any] | EvalResult] | None = None,
    source: str | Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    summary: str | None = None,
    license: str | None = None,
    language: str | list[str] | None = None,
    tags: Sequence[str] = (),
    prompt: str | None = None,
    limitations: str | None = None,
    template: str | Path | None = None,
    keep_previous: bool = True,
) -> ModelCard:
    """Fill the model card template and write it to `folder`/README.md; returns the `ModelCard`.

    Args:
        folder: the saved model folder (config.json, safetensors); README.md is written there. The parameter
            count is read from the safetensors headers when present.
        config: an xLSTMConfig or its dict; None reads `folder`/config.json.
        training: training facts and arguments, shown as a table, e.g. {"max_steps": 300, "learning_rate": 3e-3,
            "tokens seen": 1_200_000, "hardware": "2 CPU cores", "train loss": 3.1}.
        dataset: a Hub dataset id (str; also goes into the `datasets` metadata) or a dict with optional keys
            "hub_id" (Hub dataset id for the metadata), "description" (prose) and any facts to list
            (documents, tokens, split, ...).
        eval_results: results for the model-index metadata. Each entry is a huggingface_hub.EvalResult or a dict
            of its keyword arguments: required task_type (e.g. "text-generation"), dataset_type (a Hub dataset id
            or a short identifier), dataset_name (display name), metric_type (e.g. "perplexity", "acc"),
            metric_value (finite number); optional task_name, dataset_config, dataset_split, dataset_revision,
            metric_name, metric_config, metric_args, source_name + source_url (e.g. "lm-evaluation-harness").
        source: where converted weights came from: a Hub model id (str) or a dict with optional keys "repo_id"
            (Hub model id, written as `base_model` metadata), "url", "description" and other facts to list.
        repo_id: the Hub repo the folder is meant for (the usage snippet loads it); default: the folder name.
        model_name: title and model-index name; default: repo_id's last part.
        summary: one paragraph under the title; default: generated from the architecture.
        license, language, tags: card metadata (default "apache-2.0", "en"; tags are added to the xlstm ones).
        prompt: the prompt in the usage snippet.
        limitations: the Limitations section text.
        template: a Jinja template path; default model_cards/xlstm_model_card.md.
        keep_previous: the inputs of every call are stored in `folder`/model_card.json; with keep_previous (the
            default) arguments left None take the stored values and eval_results are added to the stored ones
            (an entry with the same task, dataset, split and metric is replaced). So the pretraining run, the
            lm-eval evaluation and push_to_hub (which sets repo_id) each add what they know.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = _config_dict(folder, config)
    stored_path = folder / STORED_INPUTS
    stored = json.loads(stored_path.read_text()) if keep_previous and stored_path.is_file() else {}
    given = dict(training=training, dataset=dataset, source=source, repo_id=repo_id, model_name=model_name,
                 summary=summary, license=license, language=language, prompt=prompt, limitations=limitations)
    inputs = {k: v if v is not None else stored.get(k) for k, v in given.items()}
    inputs["tags"] = list(dict.fromkeys([*stored.get("tags", []), *tags]))
    inputs["eval_results"] = _merge_results(stored.get("eval_results", []), [_eval_dict(e) for e in eval_results or []])
    stored_path.write_text(json.dumps(inputs, indent=2, default=str) + "\n")
    training, dataset, source, repo_id, model_name, summary, prompt, limitations = (
        inputs[k] for k in ("training", "dataset", "source", "repo_id", "model_name", "summary", "prompt",
                            "limitations"))
    license = inputs["license"] or "apache-2.0"
    language = inputs["language"] or "en"
    prompt = prompt or "def fibonacci(n):"
    tags = inputs["tags"]
    eval_results = inputs["eval_results"]
    repo_id = repo_id or folder.resolve().name
    model_name = model_name or repo_id.split("/")[-1]
    num_parameters = count_parameters(folder)

    results = [_eval_result(e) for e in (eval_results or [])]

    datasets = None
    if isinstance(dataset, str):
        datasets, dataset = [dataset], {"description": f"The [{dataset}](https://huggingface.co/datasets/{dataset}) "
                                                       "dataset."}
    elif isinstance(dataset, Mapping) and dataset.get("hub_id"):
        datasets = [dataset["hub_id"]]
    if source is None and cfg.get("converted_from"):
        # the config records where converted weights came from: any card written for the folder names it
        source = {"description": f"Converted from {cfg['converted_from']} to the hf_xlstm format."}
    base_model = None
    if isinstance(source, str):
        base_model, source = source, {"repo_id": source}
    elif isinstance(source, Mapping) and source.get("repo_id"):
        base_model = source["repo_id"]
    if source is not None and "description" not in source:
        source = {"description": f"Converted from `{source.get('repo_id') or source.get('url')}` to the hf_xlstm "
                                 "format.", **source}

    card_data = ModelCardData(
        language=language,
        license=license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=list(dict.fromkeys([*CARD_TAGS, *tags])),
        datasets=datasets,
        base_model=base_model,
        model_name=model_name if results else None,
        eval_results=results or None,
    )

    architecture = _architecture(cfg, num_parameters)
    if summary is None:
        style = dict(architecture).get("block style", "xLSTM")
        size = f"{_human(num_parameters)}-parameter " if num_parameters else ""
        summary = f"A {size}xLSTM causal language model, block style: {style}."
    eval_rows = [
        {"task": r.task_name or r.task_type, "dataset": r.dataset_name, "split": r.dataset_split or "-",
         "metric": r.metric_name or r.metric_type, "value": _format_value(r.metric_value)}
        for r in results
    ]
    card = ModelCard.from_template(
        card_data,
        template_path=str(template or template_path()),
        model_name=model_name,
        repo_id=repo_id,
        summary=summary,
        prompt=prompt,
        architecture=architecture,
        training=[(k, _format_value(v)) for k, v in (training or {}).items()],
        dataset=dataset,
        dataset_text=_text(dataset, "dataset") if dataset else "",
        source=source,
        source_text=_text(source, "source") if source else "",
        eval_rows=eval_rows,
        limitations=limitations or DEFAULT_LIMITATIONS,
    )
    card.save(folder / "README.md")
    validate_model_card(folder / "README.md")
    return card


def validate_model_card(card: str | Path | ModelCard, *, online: bool = False) -> ModelCard:
    """Check a card's metadata the way the Hub reads it; returns the parsed `ModelCard`.

    Offline (default): the YAML header parses strictly with huggingface_hub's ModelCardData (no ignored errors),
    the model-index (if any) converts to EvalResults with finite numeric values, and license, library_name,
    pipeline_tag are set. `card` is a card, a README.md path or a folder holding one. online=True also asks the
    Hub's validation endpoint (needs network). Raises ValueError naming the problem.
    """
    if not isinstance(card, ModelCard):
        path = Path(card)
        if path.is_dir():
            path = path / "README.md"
        if not path.is_file():
            raise FileNotFoundError(f"No model card at {path}.")
        text = path.read_text()
    else:
        text = str(card)
    if not text.startswith("---\n"):
        raise ValueError("Model card has no YAML metadata header (it must start with '---').")
    parsed = ModelCard(text, ignore_metadata_errors=False)
    data = parsed.data.to_dict()
    for key in ("license", "library_name", "pipeline_tag"):
        if not data.get(key):
            raise ValueError(f"Model card metadata lacks {key!r}.")
    if "model-index" in data:
        name, results = model_index_to_eval_results(data["model-index"])
        if not name:
            raise ValueError("model-index has no model name.")
        for r in results:
            v = r.metric_value
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"model-index metric {r.metric_type} on {r.dataset_name} has a non-numeric value {v!r}.")
    if online:
        parsed.validate()
    return parsed
