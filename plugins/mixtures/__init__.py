"""Built-in mixture policies; each registers under ``mixture.<name>`` in pyproject.toml."""
