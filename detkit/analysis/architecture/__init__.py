"""Seeing the architecture: per-layer shapes, parameters, multiply-adds, stride, receptive field."""
from detkit.analysis.architecture.summary import LayerRow, Summary, SummaryError, format_table, summarize, to_markdown

__all__ = ["LayerRow", "Summary", "SummaryError", "format_table", "summarize", "to_markdown"]
