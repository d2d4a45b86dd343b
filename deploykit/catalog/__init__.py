"""Built-in hardware profiles and the model catalog, kept as TOML data files, and their loaders."""

from deploykit.catalog.loader import (
    builtin_models,
    builtin_profiles,
    find_model,
    find_profile,
    load_profiles_file,
)

__all__ = ["builtin_models", "builtin_profiles", "find_model", "find_profile", "load_profiles_file"]
