"""Data files shipped with interp."""
