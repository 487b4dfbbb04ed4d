"""msfer's version: one place, read by the package, its build (pyproject.toml) and every file it writes."""
__version__ = "0.1.0"
