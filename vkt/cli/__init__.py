"""The `vkt` command line (typer). Each command lives in its own module and imports heavy things lazily."""
