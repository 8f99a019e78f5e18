"""The one place that knows which transformers release is installed.

transformers 5.24 renamed the cache argument of `forward()` and the cache field of model outputs from
`past_key_values` to `cache` (the old names stay as deprecated aliases until 5.40): generate() now calls
`forward(cache=...)` and reads `outputs["cache"]`, where 5.23 used `past_key_values` for both. The model takes
either name and writes its outputs under the name the installed release defines, read off transformers' own
output class rather than guessed from a version number.

Nothing here swallows a keyword: a forward that is handed a name it does not know must fail loudly (a future
rename then breaks our tests instead of silently dropping the cache and generating wrong tokens).

transformers 5.23 renamed activation checkpointing's switches: `TrainingArguments(gradient_checkpointing=...)` ->
`activation_checkpointing` (`--activation_checkpointing true`; the old name stays as a deprecated alias) and
`model.gradient_checkpointing_enable()` -> `activation_checkpointing_enable()`. Before 5.23 only the old names
exist. Our scripts' arguments build on `TrainingArguments` below, which has the new flag on every release, and code
that reads or sets the switch on arguments it did not build asks `checkpointing_field` for its name;
`set_activation_checkpointing` switches a model under either name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers.modeling_outputs import CausalLMOutputWithPast

# The name under which the installed transformers passes the cache to forward() and reads it from the output.
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def resolve_cache(cache, past_key_values):
    """The cache a forward was given, under whichever name; both at once is an error, not a silent pick."""
    if cache is not None and past_key_values is not None:
        raise TypeError("Got a cache both as `cache` and as `past_key_values`: pass it once (`cache` on "
                        "transformers >= 5.24, where `past_key_values` is the deprecated name).")
    return cache if cache is not None else past_key_values


def output_with_cache(output_class, cache, **fields):
    """`output_class(**fields)` with the cache under the field name the installed transformers defines."""
    return output_class(**fields, **{CACHE_NAME: cache})


def cache_of(outputs):
    """The cache a model output carries, on any supported release (`outputs.cache` / `outputs.past_key_values`)."""
    return outputs[CACHE_NAME] if CACHE_NAME in outputs else None


def checkpointing_field(args) -> str:
    """The field of TrainingArguments `args` that switches activation checkpointing on (`activation_checkpointing`
    from transformers 5.23 and on our `TrainingArguments`, `gradient_checkpointing` on transformers' own before)."""
    return "activation_checkpointing" if "activation_checkpointing" in args.__dataclass_fields__ \
        else "gradient_checkpointing"


def set_activation_checkpointing(model, on: bool) -> None:
    """`model.activation_checkpointing_enable()` / `_disable()` (transformers >= 5.23), else the older
    `gradient_checkpointing_*` names, which 5.23 deprecated."""
    action = "enable" if on else "disable"
    switch = getattr(model, f"activation_checkpointing_{action}", None)
    (switch or getattr(model, f"gradient_checkpointing_{action}"))()


def _training_arguments_class() -> type:
    """transformers' TrainingArguments from 5.23 on; before, a subclass with 5.23's `activation_checkpointing` flag,
    resolved as 5.23 does: set, it wins over `gradient_checkpointing`; afterwards both hold the same value."""
    from transformers import TrainingArguments as Base

    if "activation_checkpointing" in Base.__dataclass_fields__:
        return Base

    @dataclass
    class TrainingArguments(Base):
        __doc__ = _training_arguments_class.__doc__

        activation_checkpointing: bool | None = field(default=None, metadata={
            "help": "Recompute each block's activations in the backward pass (less memory, about 20%% more compute); "
                    "the name of gradient_checkpointing from transformers 5.23 on.", "nargs": "?", "const": True})

        def __post_init__(self):
            if self.activation_checkpointing is not None:
                self.gradient_checkpointing = self.activation_checkpointing
            super().__post_init__()
            self.activation_checkpointing = self.gradient_checkpointing

    TrainingArguments.__qualname__ = "TrainingArguments"  # pickled (training_args.bin) as hf_xlstm.compat's
    return TrainingArguments


def __getattr__(name: str):
    # `TrainingArguments` is made on first use: this module also ships as model code beside saved weights, which
    # need not import transformers' training stack to load a model.
    if name == "TrainingArguments":
        globals()[name] = _training_arguments_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
