"""Email templates: sandboxed Jinja2 files with subject, text and html blocks, compiled once.

A template is one file, ``<name>.j2``, holding ``{% block subject %}``, ``{% block text %}``
and ``{% block html %}``, either itself or through a layout it extends. Files whose names
start with ``_`` are layouts and partials and cannot be sent. Locale variants sit beside
the default file: ``welcome.fr.j2``, ``welcome.fr-CA.j2``. A request for ``fr-CA`` (or
``fr_ca``: matching ignores case and treats ``_`` as ``-``) tries ``welcome.fr-CA.j2``, then
``welcome.fr.j2``, then ``welcome.j2``.

Templates see ``user``, ``event``, ``context`` and ``locale`` (the locale asked for, or
None). On a mapping, ``a.b`` looks up the key ``b`` before any method of the same name,
so ``context.items`` is the enrollment's items, not ``dict.items``. Only the html part is
autoescaped; the subject and text are plain text. Undefined variables are errors
(``StrictUndefined``): optional values need ``| default(...)`` or an ``is defined`` test.
Each file is parsed and compiled once per ``Templates`` object (once for the plain-text
parts, once for the html part); edits on disk are seen by a new ``Templates``.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from jinja2 import Environment, StrictUndefined, Template
from jinja2.exceptions import SecurityError, TemplateNotFound, TemplateSyntaxError, UndefinedError

from mailstream.workflows.template_files import (
    SUFFIX,
    Fault,
    TemplateDirectory,
    TemplateError,
    normal_name,
    syntax_fault,
)
from mailstream.workflows.template_sandbox import Sandbox, bounded_format

# The shipped templates, installed with the package (package data).
DEFAULT_TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "email_templates"
BLOCKS = ("subject", "text", "html")
VERSION_CHARS = 12

_FILE_RE = re.compile(
    r"(?P<name>[A-Za-z0-9_-]+)(?:\.(?P<locale>[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*))?\.j2"
)
# Every character str.splitlines() breaks on: any of them could end a header line.
_LINE_BREAK_RE = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


@dataclass(frozen=True, slots=True)
class Rendered:
    """One rendered email. ``version`` hashes every source file the template is made of."""

    subject: str
    text: str
    html: str
    template: str
    version: str
    locale: str | None


def _template_of(file: str) -> str:
    """The template name a file belongs to: ``welcome.fr.j2`` -> ``welcome``."""
    match = _FILE_RE.fullmatch(file)
    return match["name"] if match else file.removesuffix(SUFFIX)


def _locale_key(tag: str) -> str:
    return tag.replace("_", "-").lower()


def _where(tb: TracebackType | None) -> tuple[str | None, int | None]:
    """The innermost template frame of a traceback, as (file, line in that file)."""
    file: str | None = None
    line: int | None = None
    while tb is not None:
        template = tb.tb_frame.f_globals.get("__jinja_template__")
        if isinstance(template, Template):
            file, line = template.name, template.get_corresponding_lineno(tb.tb_lineno)
        tb = tb.tb_next
    return file, line


def _missing_block(block: str) -> str:
    return (
        f"has no {{% block {block} %}}: every template needs subject, text and html blocks, "
        "its own or from the layout it extends"
    )


class Templates:
    """The templates in one directory, compiled on first use and kept for this object's life."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._files = TemplateDirectory(self.directory)
        self._variants: dict[str, dict[str, tuple[str | None, str]]] = {}
        for file in self._files.files:
            match = _FILE_RE.fullmatch(file)
            if match is None:
                continue
            key = _locale_key(match["locale"]) if match["locale"] else ""
            self._variants.setdefault(match["name"], {}).setdefault(key, (match["locale"], file))
        options: dict[str, Any] = {
            "loader": self._files,
            "undefined": StrictUndefined,
            "trim_blocks": True,
            "lstrip_blocks": True,
            "auto_reload": False,
            "cache_size": -1,
        }
        self._text_env = Sandbox(autoescape=False, **options)
        self._html_env = Sandbox(autoescape=True, **options)
        for env in (self._text_env, self._html_env):
            env.filters["format"] = bounded_format
        self._prepared: dict[str, Fault | None] = {}
        self._versions: dict[str, str] = {}

    def names(self) -> list[str]:
        """The templates that can be sent (layouts and partials, named ``_*``, are not)."""
        return sorted(name for name in self._variants if not name.startswith("_"))

    def check(self) -> list[TemplateError]:
        """Compile every file; one error per broken file (a broken layout is reported once)."""
        errors: list[TemplateError] = []
        seen: set[tuple[str | None, int | None, str]] = set()
        for file in self._files.files:
            template = _template_of(file)
            fault: Fault | None = None
            if "/" not in file and _FILE_RE.fullmatch(file) is None:
                fault = Fault(
                    file,
                    None,
                    "file name is not <name>.j2 or <name>.<locale>.j2, e.g. welcome.fr.j2",
                )
            else:
                try:
                    self._prepare(file)
                except Fault as exc:
                    fault = exc
            if fault is not None and (fault.file, fault.line, fault.reason) not in seen:
                seen.add((fault.file, fault.line, fault.reason))
                errors.append(fault.error(template))
        for name, variants in sorted(self._variants.items()):
            if "" not in variants and not name.startswith("_"):
                files = ", ".join(file for _, file in variants.values())
                errors.append(
                    TemplateError(name, None, f"has locale variants ({files}) but no {name}.j2")
                )
        return errors

    def render(
        self,
        name: str,
        *,
        user: Mapping[str, Any],
        event: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        locale: str | None = None,
    ) -> Rendered:
        """Render the subject, text and html of a template; every failure is a TemplateError."""
        tag, file = self._choose(name, locale)
        variables = {
            "user": user,
            "event": event if event is not None else {},
            "context": context if context is not None else {},
            "locale": locale,
        }
        try:
            self._prepare(file)
            subject, text = self._render(self._text_env, file, variables, ("subject", "text"))
            (html,) = self._render(self._html_env, file, variables, ("html",))
            version = self._version(file)
        except Fault as fault:
            raise fault.error(name) from None
        except TemplateSyntaxError as exc:  # a dynamic include of a broken file
            raise syntax_fault(exc).error(name) from None
        except Exception as exc:
            raise self._runtime_error(name, exc) from exc
        subject = subject.strip()
        if not subject:
            raise TemplateError(name, None, "the subject is empty after rendering", file)
        line_break = _LINE_BREAK_RE.search(subject)
        if line_break is not None:
            raise TemplateError(
                name,
                None,
                f"the subject would contain a line break ({line_break.group()!r}), which an "
                "email header cannot carry: keep line breaks out of the values it uses",
                file,
            )
        return Rendered(subject, text.strip(), html.strip(), name, version, tag)

    def _choose(self, name: str, locale: str | None) -> tuple[str | None, str]:
        variants = self._variants.get(name) if not name.startswith("_") else None
        if not variants:
            available = ", ".join(self.names()) or "(none)"
            raise TemplateError(
                name, None, f"no template '{name}' in {self._files.display}; available: {available}"
            )
        if locale:
            parts = _locale_key(locale).split("-")
            for size in range(len(parts), 0, -1):
                found = variants.get("-".join(parts[:size]))
                if found is not None:
                    return found
        if "" not in variants:
            files = ", ".join(file for _, file in variants.values())
            raise TemplateError(
                name, None, f"no {name}.j2 and no variant for locale {locale!r} (has {files})"
            )
        return variants[""]

    def _prepare(self, file: str, busy: frozenset[str] = frozenset()) -> None:
        """Compile a file and what it statically extends, includes or imports, once."""
        if file in self._prepared:
            fault = self._prepared[file]
            if fault is not None:
                raise fault
            return
        try:
            for env in (self._text_env, self._html_env):
                try:
                    env.get_template(file)
                except TemplateSyntaxError as exc:
                    raise syntax_fault(exc) from None
                except TemplateNotFound:
                    raise Fault(file, None, "was removed after the directory was read") from None
            info = self._files.info(file)
            for ref in info.refs:
                target = normal_name(ref.name)
                if target is None or not self._files.exists(target):
                    if ref.ignore_missing:
                        continue
                    raise Fault(
                        file,
                        ref.line,
                        f"{ref.kind} '{ref.name}', which is not in {self._files.display}",
                    )
                if target != file and target not in busy:
                    self._prepare(target, busy | {file})
            match = _FILE_RE.fullmatch(file)
            if match is not None and not match["name"].startswith("_"):
                blocks = self._blocks(file)
                for block in BLOCKS:
                    if blocks is not None and block not in blocks:
                        raise Fault(file, None, _missing_block(block))
        except Fault as fault:
            self._prepared[file] = fault
            raise
        self._prepared[file] = None

    def _blocks(self, file: str) -> frozenset[str] | None:
        """Blocks a file has with those of its layouts; None when that depends on data."""
        found: set[str] = set()
        chain: list[str] = []
        current: str | None = file
        while current is not None:
            if current in chain:
                loop = " -> ".join([*chain, current])
                raise Fault(file, None, f"extends itself in a loop: {loop}")
            chain.append(current)
            info = self._files.info(current)
            if not info.blocks_known:
                return None
            found |= info.blocks
            current = normal_name(info.extends) if info.extends else None
        return frozenset(found)

    def _render(
        self, env: Environment, file: str, variables: dict[str, Any], blocks: tuple[str, ...]
    ) -> list[str]:
        template = env.get_template(file)
        ctx = template.new_context(dict(variables))
        # Running the whole template once resolves extends, imports and top-level sets
        # exactly as Jinja does; the output is discarded and the blocks rendered one by one.
        collections.deque(template.root_render_func(ctx), maxlen=0)
        parts = []
        for block in blocks:
            stack = ctx.blocks.get(block)
            if not stack:
                raise Fault(file, None, _missing_block(block))
            parts.append(str(env.concat(stack[0](ctx))))
        return parts

    def _runtime_error(self, name: str, exc: Exception) -> TemplateError:
        file, line = _where(exc.__traceback__)
        message = str(exc).rstrip(".")
        if isinstance(exc, SecurityError):
            reason = f"unsafe access blocked by the sandbox: {message}"
        elif isinstance(exc, UndefinedError):
            reason = message
        elif isinstance(exc, TemplateNotFound):
            reason = f"'{exc.name}' is not in {self._files.display}"
        else:
            reason = f"{type(exc).__name__} while rendering: {message}"
        return TemplateError(name, line, reason, normal_name(file) if file else None)

    def _version(self, file: str) -> str:
        version = self._versions.get(file)
        if version is None:
            files = self._closure(file)
            digest = hashlib.sha256()
            for name in sorted(files):
                digest.update(name.encode() + b"\0" + self._files.source(name).digest)
            version = self._versions[file] = digest.hexdigest()[:VERSION_CHARS]
        return version

    def _closure(self, file: str) -> set[str]:
        """The files a template is made of; all of them if it names one at render time."""
        files: set[str] = set()
        todo = [file]
        while todo:
            current = todo.pop()
            if current in files:
                continue
            files.add(current)
            info = self._files.info(current)
            if info.dynamic_refs:
                return set(self._files.files) | files
            for ref in info.refs:
                target = normal_name(ref.name)
                if target is not None and self._files.exists(target):
                    todo.append(target)
        return files
