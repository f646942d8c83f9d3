"""Graph capture for users: ``@graph.module(name)`` names a captured, compiled computation.

>>> from tsol import graph
>>> callable(graph.module("block"))
True
"""

from tsol.schedule.compiled import Compiled, Executable
from tsol.schedule.graph import Graph, Node
from tsol.schedule.pipeline import module

__all__ = ["module", "Graph", "Node", "Compiled", "Executable"]
