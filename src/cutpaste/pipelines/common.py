"""Helpers the pipeline packages share: binding a node function's leading arguments.

Kedro names a node's inputs by dataset; values such as the category a namespaced copy of a template is
for are bound into the function instead, keeping the function's name and docstring for ``kedro viz``.
"""

from __future__ import annotations

from collections.abc import Callable


def bind(function: Callable, *leading) -> Callable:
    """``function(*leading, *inputs)`` as a node function of the remaining inputs."""

    def bound(*inputs):
        return function(*leading, *inputs)

    return named_like(bound, function)


def named_like(function: Callable, original: Callable, name: str | None = None) -> Callable:
    """``function`` carrying ``original``'s name and docstring (Kedro and kedro-viz show them)."""
    for attribute in ("__name__", "__qualname__"):
        setattr(function, attribute, name or getattr(original, "__name__"))
    setattr(function, "__doc__", getattr(original, "__doc__"))
    return function


def bind_category(function: Callable, category: str) -> Callable:
    """``function(category, *inputs)`` as a node function of the remaining inputs."""
    return bind(function, category)


def bind_run(function: Callable, point: str, seed: int) -> Callable:
    """``function(point, seed, *inputs)`` as a node function of the remaining inputs."""
    return bind(function, point, seed)
