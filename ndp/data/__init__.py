"""Data sources for recommendation training: synthetic Criteo-like logs, Criteo TSV, MovieLens-100k."""
