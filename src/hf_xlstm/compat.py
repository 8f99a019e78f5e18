"""The one place that knows which transformers release is installed.

transformers 5.24 renamed the cache argument of `forward()` and the cache field of model outputs from
`past_key_values` to `cache` (the old names stay as deprecated aliases until 5.40): generate() now calls
`forward(cache=...)` and reads `outputs["cache"]`, where 5.23 used `past_key_values` for both. The model takes
either name and writes its outputs under the name the installed release defines, read off transformers' own
output class rather than guessed from a version number.

Nothing here swallows a keyword: a forward that is handed a name it does not know must fail loudly (a future
rename then breaks our tests instead of silently dropping the cache and generating wrong tokens).
"""

from __future__ import annotations

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
