"""Plotly figures that work offline: plotly.js is written once into the output root."""

from interp.plotting.heads import head_heatmap
from interp.plotting.html import save_figure

__all__ = ["head_heatmap", "save_figure"]
