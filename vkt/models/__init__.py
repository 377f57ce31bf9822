"""Per-family additions to the reference modules: losses, label generation, weight loaders, export wrappers."""
