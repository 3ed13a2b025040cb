"""Name -> entry tables for the parts a user picks by name in a config: teacher sources, student
architectures and loss terms (timm's pattern: one decorator registers, a name resolves to a builder).

The tables live here, below every layer, so that :mod:`dtgnet.config` can check a name against them; the
entries are registered by the modules that implement them, all imported by ``import dtgnet``.
"""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str, key: str) -> T:
        """The entry called ``name``; an unknown name is a :class:`ConfigError` on the config ``key``."""
        if name not in self._entries:
            raise ConfigError(key, f"{name!r} is not one of {', '.join(self._entries)}")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries.values())


TEACHER_SOURCES: Registry = Registry("teacher source")
"""name -> :class:`dtgnet.teachers.sources.TeacherSource`."""
STUDENTS: Registry = Registry("student architecture")
"""name -> :class:`dtgnet.students.base.StudentArch`."""
TEACHER_TERMS: Registry = Registry("loss term")
"""name -> :class:`dtgnet.objectives.terms.TeacherTerm`, in the order they add into each L_k."""
