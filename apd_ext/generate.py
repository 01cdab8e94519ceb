"""Compatibility module: the decoding loop lives in apd_ext.decode (driver.py: generate)."""

from apd_ext.decode.driver import GenerateOutput, generate
from apd_ext.decode.graphs import clear_graph_cache

__all__ = ["generate", "GenerateOutput", "clear_graph_cache"]
