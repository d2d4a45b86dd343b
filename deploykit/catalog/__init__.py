"""Built-in hardware profiles and the model catalog, kept as TOML data files, and their loaders."""

from deploykit.catalog.loader import (
    MODEL_ID,
    GgufSource,
    ModelSpec,
    builtin_models,
    builtin_profiles,
    find_model,
    find_profile,
    load_profiles_file,
)

__all__ = [
    "MODEL_ID",
    "GgufSource",
    "ModelSpec",
    "builtin_models",
    "builtin_profiles",
    "find_model",
    "find_profile",
    "load_profiles_file",
]
