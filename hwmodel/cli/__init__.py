"""Command-line sub-commands of `python -m hwmodel`."""
