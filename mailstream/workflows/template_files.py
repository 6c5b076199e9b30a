"""Template files: reading a template directory, what each file's syntax tree says about
it, and the errors that name a template, a file and a line."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import BaseLoader, Environment, Template, nodes
from jinja2.exceptions import TemplateAssertionError, TemplateNotFound, TemplateSyntaxError
from jinja2.loaders import split_template_path

from mailstream.exceptions import MailstreamError

logger = logging.getLogger(__name__)

SUFFIX = ".j2"
_KIND = {"Extends": "extends", "Include": "includes", "Import": "imports", "FromImport": "imports"}


class TemplateError(MailstreamError):
    """A template could not be compiled or rendered: which one, the line where known, and why.

    ``file`` is the source file the line belongs to, named in the message when it is not
    the template's own default file (a locale variant, a layout, a partial).
    """

    def __init__(
        self, template: str, line: int | None, reason: str, file: str | None = None
    ) -> None:
        super().__init__(template, line, reason, file)
        self.template = template
        self.line = line
        self.reason = reason
        self.file = file

    def __str__(self) -> str:
        if not self.template:
            return self.reason
        where = f"template '{self.template}'"
        if self.line is not None:
            where += f" line {self.line}"
        if self.file is not None and self.file != self.template + SUFFIX:
            where += f" of {self.file}" if self.line is not None else f" in {self.file}"
        return f"{where}: {self.reason}"


class Fault(Exception):
    """A problem located in a source file, before it is tied to the template asked for."""

    def __init__(self, file: str | None, line: int | None, reason: str) -> None:
        super().__init__(file, line, reason)
        self.file = file
        self.line = line
        self.reason = reason

    def error(self, template: str) -> TemplateError:
        return TemplateError(template, self.line, self.reason, self.file)


@dataclass(frozen=True, slots=True)
class _Ref:
    kind: str
    name: str
    line: int
    ignore_missing: bool


@dataclass(frozen=True, slots=True)
class _Info:
    """What a file's syntax tree says about it, read before compiling."""

    refs: tuple[_Ref, ...]
    dynamic_refs: bool  # a template name computed at render time: dependencies unknown
    blocks: frozenset[str]
    extends: str | None
    blocks_known: bool  # False when the parent is computed or the extends is conditional


@dataclass(frozen=True, slots=True)
class _Source:
    text: str
    path: str
    digest: bytes


def _scan(tree: nodes.Template) -> _Info:
    refs: list[_Ref] = []
    dynamic = False
    for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        target = node.template  # type: ignore[attr-defined]
        if isinstance(target, nodes.Const) and isinstance(target.value, str):
            missing_ok = bool(getattr(node, "ignore_missing", False))
            refs.append(_Ref(_KIND[type(node).__name__], target.value, node.lineno, missing_ok))
        else:
            dynamic = True
    extends_nodes = list(tree.find_all(nodes.Extends))
    extends = None
    known = not extends_nodes
    if len(extends_nodes) == 1 and any(node is extends_nodes[0] for node in tree.body):
        target = extends_nodes[0].template
        if isinstance(target, nodes.Const) and isinstance(target.value, str):
            extends, known = target.value, True
    blocks = frozenset(block.name for block in tree.find_all(nodes.Block))
    return _Info(tuple(refs), dynamic, blocks, extends, known)


def normal_name(name: str) -> str | None:
    """A template reference as a path relative to the directory; None if it leaves it."""
    try:
        return "/".join(split_template_path(name))
    except TemplateNotFound:
        return None


class TemplateDirectory(BaseLoader):
    """Reads each file once and records its syntax tree facts when it is first compiled."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.display = f"{os.fspath(directory).rstrip('/')}/"
        if not directory.is_dir():
            raise TemplateError(
                "", None, f"template directory {self.display} does not exist or is not a directory"
            )
        self.files = sorted(
            relative.as_posix()
            for relative in (path.relative_to(directory) for path in directory.rglob(f"*{SUFFIX}"))
            if (directory / relative).is_file()
            and not any(part.startswith(".") for part in relative.parts)
        )
        self._sources: dict[str, _Source] = {}
        self._infos: dict[str, _Info] = {}

    def exists(self, name: str) -> bool:
        key = normal_name(name)
        return key is not None and (key in self._sources or (self.directory / key).is_file())

    def source(self, name: str) -> _Source:
        key = normal_name(name)
        if key is None:
            raise TemplateNotFound(name)
        cached = self._sources.get(key)
        if cached is not None:
            return cached
        path = self.directory / key
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise TemplateNotFound(name) from None
        except OSError as exc:
            raise Fault(key, None, f"cannot be read: {exc.strerror or exc}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Fault(
                key, None, f"is not UTF-8 text (byte {exc.start}): save it as UTF-8"
            ) from None
        source = _Source(text, os.fspath(path), hashlib.sha256(data).digest())
        self._sources[key] = source
        return source

    def info(self, name: str) -> _Info:
        return self._infos[normal_name(name) or name]

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        source = self.source(template)
        return source.text, source.path, lambda: True

    def load(
        self,
        environment: Environment,
        name: str,
        globals: MutableMapping[str, Any] | None = None,
    ) -> Template:
        # Parse here rather than in BaseLoader.load so the tree can be read before the
        # compiler's optimiser rewrites it.
        source = self.source(name)
        tree = environment.parse(source.text, name, source.path)
        self._infos.setdefault(normal_name(name) or name, _scan(tree))
        code = environment.compile(tree, name, source.path)
        logger.debug("compiled %s (autoescape %s)", name, environment.autoescape)
        return environment.template_class.from_code(environment, code, globals or {}, None)


def syntax_fault(exc: TemplateSyntaxError) -> Fault:
    file = normal_name(exc.name) if exc.name else None
    what = "" if isinstance(exc, TemplateAssertionError) else "syntax error: "
    return Fault(file, exc.lineno, f"{what}{exc.message}")
