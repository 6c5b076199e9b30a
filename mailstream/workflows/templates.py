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
import logging
import os
import re
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from jinja2 import BaseLoader, Environment, StrictUndefined, Template, Undefined, nodes
from jinja2.exceptions import (
    SecurityError,
    TemplateAssertionError,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.filters import do_format
from jinja2.loaders import split_template_path
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mailstream.exceptions import MailstreamError

logger = logging.getLogger(__name__)

# The shipped templates, installed with the package (package data).
DEFAULT_TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "email_templates"
SUFFIX = ".j2"
BLOCKS = ("subject", "text", "html")
VERSION_CHARS = 12

# Limits on what one expression may build. Without them `2 ** (10 ** 10)` hangs the
# compiler itself (Jinja folds constant expressions at compile time).
MAX_POWER_BITS = 4096
MAX_REPEAT = 1_000_000

_FILE_RE = re.compile(
    r"(?P<name>[A-Za-z0-9_-]+)(?:\.(?P<locale>[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*))?\.j2"
)
# Every character str.splitlines() breaks on: any of them could end a header line.
_LINE_BREAK_RE = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_CALL_PROBES = frozenset({"jinja_pass_arg", "unsafe_callable", "alters_data"})
_KIND = {"Extends": "extends", "Include": "includes", "Import": "imports", "FromImport": "imports"}


@dataclass(frozen=True, slots=True)
class Rendered:
    """One rendered email. ``version`` hashes every source file the template is made of."""

    subject: str
    text: str
    html: str
    template: str
    version: str
    locale: str | None


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


class _Fault(Exception):
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


def _normal(name: str) -> str | None:
    """A template reference as a path relative to the directory; None if it leaves it."""
    try:
        return "/".join(split_template_path(name))
    except TemplateNotFound:
        return None


class _Directory(BaseLoader):
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
        key = _normal(name)
        return key is not None and (key in self._sources or (self.directory / key).is_file())

    def source(self, name: str) -> _Source:
        key = _normal(name)
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
            raise _Fault(key, None, f"cannot be read: {exc.strerror or exc}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Fault(
                key, None, f"is not UTF-8 text (byte {exc.start}): save it as UTF-8"
            ) from None
        source = _Source(text, os.fspath(path), hashlib.sha256(data).digest())
        self._sources[key] = source
        return source

    def info(self, name: str) -> _Info:
        return self._infos[_normal(name) or name]

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
        self._infos.setdefault(_normal(name) or name, _scan(tree))
        code = environment.compile(tree, name, source.path)
        logger.debug("compiled %s (autoescape %s)", name, environment.autoescape)
        return environment.template_class.from_code(environment, code, globals or {}, None)


def _huge_power(left: Any, right: Any) -> bool:
    if not (isinstance(left, int) and isinstance(right, int)) or abs(left) < 2 or right < 1:
        return False
    return abs(left).bit_length() * right > MAX_POWER_BITS


def _huge_repeat(left: Any, right: Any) -> bool:
    for seq, times in ((left, right), (right, left)):
        if isinstance(times, int) and isinstance(seq, str | list | tuple):
            return len(seq) * times > MAX_REPEAT
    if isinstance(left, int) and isinstance(right, int):  # squaring in a loop grows too
        return abs(left).bit_length() + abs(right).bit_length() > MAX_POWER_BITS
    return False


# Methods and format specs that pad a string to a width: bounded like repetition.
_WIDTH_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})
_WIDE_SPEC = re.compile(r"\d{7,}")  # a width or precision of a million or more


def _huge_width(method: Any, args: tuple[Any, ...]) -> bool:
    method = getattr(method, "__wrapped__", method)  # the sandbox wraps str.format
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str):
        return False
    name = getattr(method, "__name__", "")
    if name in _WIDTH_METHODS:
        return any(isinstance(a, int) and a > MAX_REPEAT for a in args)
    return name in ("format", "format_map") and bool(_WIDE_SPEC.search(owner))


def _bounded_format(value: Any, *args: Any, **kwargs: Any) -> str:
    """Jinja's ``format`` filter (printf style), refusing widths past the repeat limit."""
    if isinstance(value, str) and _WIDE_SPEC.search(value):
        raise SecurityError(f"a format width past {MAX_REPEAT} is not allowed in a template")
    return str(do_format(value, *args, **kwargs))


class _MissingKey(StrictUndefined):
    """A key a mapping lacks that is also the name of one of its methods (``items``, ``get``).

    It is undefined, so ``context.items | default([])`` and ``is defined`` mean the key,
    yet calling it still calls the method, so ``user.items()`` and ``user.get("x")`` work.
    """

    __slots__ = ("_method",)

    def __init__(self, method: Callable[..., Any], obj: Any, name: str) -> None:
        super().__init__(obj=obj, name=name)
        self._method = method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._method(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Jinja probes callables for these with getattr/hasattr, which only tolerate
        # AttributeError; any other attribute is the undefined error it should be.
        if name in _CALL_PROBES:
            raise AttributeError(name)
        return super().__getattr__(name)


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with mapping keys before methods and bounded ``*`` and ``**``."""

    intercepted_binops = frozenset({"*", "**"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        if not isinstance(obj, Mapping):
            return super().getattr(obj, attribute)
        try:
            return obj[attribute]
        except (KeyError, TypeError):
            pass
        value = super().getattr(obj, attribute)  # the sandbox vets the method
        if callable(value) and not isinstance(value, Undefined):
            return _MissingKey(value, obj, attribute)
        return value

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if _huge_width(__obj, args) or _huge_width(__obj, tuple(kwargs.values())):
            raise SecurityError(f"padding a string past {MAX_REPEAT} is not allowed")
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and _huge_power(left, right):
            raise SecurityError(f"a power over {MAX_POWER_BITS} bits is not allowed in a template")
        if operator == "*" and _huge_repeat(left, right):
            raise SecurityError(
                f"repeating a sequence past {MAX_REPEAT} items (or multiplying numbers past"
                f" {MAX_POWER_BITS} bits) is not allowed"
            )
        return super().call_binop(context, operator, left, right)


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


def _syntax_fault(exc: TemplateSyntaxError) -> _Fault:
    file = _normal(exc.name) if exc.name else None
    what = "" if isinstance(exc, TemplateAssertionError) else "syntax error: "
    return _Fault(file, exc.lineno, f"{what}{exc.message}")


def _missing_block(block: str) -> str:
    return (
        f"has no {{% block {block} %}}: every template needs subject, text and html blocks, "
        "its own or from the layout it extends"
    )


class Templates:
    """The templates in one directory, compiled on first use and kept for this object's life."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._files = _Directory(self.directory)
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
        self._text_env = _Sandbox(autoescape=False, **options)
        self._html_env = _Sandbox(autoescape=True, **options)
        for env in (self._text_env, self._html_env):
            env.filters["format"] = _bounded_format
        self._prepared: dict[str, _Fault | None] = {}
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
            fault: _Fault | None = None
            if "/" not in file and _FILE_RE.fullmatch(file) is None:
                fault = _Fault(
                    file,
                    None,
                    "file name is not <name>.j2 or <name>.<locale>.j2, e.g. welcome.fr.j2",
                )
            else:
                try:
                    self._prepare(file)
                except _Fault as exc:
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
        except _Fault as fault:
            raise fault.error(name) from None
        except TemplateSyntaxError as exc:  # a dynamic include of a broken file
            raise _syntax_fault(exc).error(name) from None
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
                    raise _syntax_fault(exc) from None
                except TemplateNotFound:
                    raise _Fault(file, None, "was removed after the directory was read") from None
            info = self._files.info(file)
            for ref in info.refs:
                target = _normal(ref.name)
                if target is None or not self._files.exists(target):
                    if ref.ignore_missing:
                        continue
                    raise _Fault(
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
                        raise _Fault(file, None, _missing_block(block))
        except _Fault as fault:
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
                raise _Fault(file, None, f"extends itself in a loop: {loop}")
            chain.append(current)
            info = self._files.info(current)
            if not info.blocks_known:
                return None
            found |= info.blocks
            current = _normal(info.extends) if info.extends else None
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
                raise _Fault(file, None, _missing_block(block))
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
        return TemplateError(name, line, reason, _normal(file) if file else None)

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
                target = _normal(ref.name)
                if target is not None and self._files.exists(target):
                    todo.append(target)
        return files


def sandbox() -> Environment:
    """The sandbox email templates render in (plain text, ``StrictUndefined``, bounded
    ``*``, ``**`` and padding), without a loader: for short templates kept in the config,
    such as webhook bodies."""
    env = _Sandbox(autoescape=False, undefined=StrictUndefined, auto_reload=False)
    env.filters["format"] = _bounded_format
    return env
