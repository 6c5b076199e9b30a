"""Read the config: the file and its includes, environment overrides, tenants' merged
sections; every error names the key path and the reason."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mailstream.config.schema import DEFAULT_WORKFLOWS, Config
from mailstream.config.tenant_sections import TENANT_DELIVERY_KEYS, TenantConfig
from mailstream.exceptions import ConfigError

CONFIG_ENV = "MAILSTREAM_CONFIG"

logger = logging.getLogger(__name__)

# Environment variables that override one key each, for containers and tests.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "MAILSTREAM_BROKER_URL": ("broker", "url"),
    "MAILSTREAM_BROKER_EMBEDDED": ("broker", "embedded"),
    "MAILSTREAM_APP_ID": ("app_id",),
    "MAILSTREAM_DATA_DIR": ("data_dir",),
    "MAILSTREAM_WEB_HOST": ("web", "host"),
    "MAILSTREAM_WEB_PORT": ("web", "port"),
    "MAILSTREAM_CANONICAL_URL": ("web", "canonical_url"),
    "MAILSTREAM_PARTITIONS": ("topics", "partitions"),
    "MAILSTREAM_TEMPLATES_DIR": ("templates_dir",),
}


def _apply_overrides(
    raw: dict[str, Any], env: os._Environ[str] | dict[str, str]
) -> dict[tuple[str, ...], str]:
    """Write the overrides into ``raw``; return which key came from which variable."""
    applied: dict[tuple[str, ...], str] = {}
    for var, path in ENV_OVERRIDES.items():
        if var not in env:
            continue
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"{var}: cannot override {'.'.join(path)}: {part} is not a mapping"
                )
            node = child
        node[path[-1]] = env[var]
        applied[path] = var
    return applied


def _format_errors(
    source: str, exc: ValidationError, overridden: dict[tuple[str, ...], str]
) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; the README lists every key)"
        if loc in overridden:
            msg += f" (set by ${overridden[loc]})"
        lines.append(f"{source}: {key}: {msg}")
    return "\n".join(lines)


def _resolve_templates_dirs(
    raw: dict[str, Any], base: Path, overridden: dict[tuple[str, ...], str]
) -> None:
    """Make each relative ``templates_dir`` in the file (the default's and the tenants')
    relative to ``base``, the config file's directory. One from ``$MAILSTREAM_TEMPLATES_DIR``
    stays relative to the working directory, as any path given in a shell does."""

    def resolve(value: Any) -> Any:
        if not isinstance(value, str | os.PathLike) or Path(value).is_absolute():
            return value
        beside = (base / value).resolve()
        # Before this release the path was taken from the working directory: a file
        # written that way keeps working while that reading is the only one that exists.
        cwd = Path(value).resolve()
        if not beside.is_dir() and cwd.is_dir() and cwd != beside:
            logger.warning(
                "templates_dir %s is not beside the config file (%s); using %s, relative to"
                " the working directory. Make the path relative to the config file.",
                value,
                beside,
                cwd,
            )
            return str(cwd)
        return str(beside)

    if "templates_dir" in raw and ("templates_dir",) not in overridden:
        raw["templates_dir"] = resolve(raw["templates_dir"])
    tenants = raw.get("tenants")
    if isinstance(tenants, dict):
        for tenant in tenants.values():
            if isinstance(tenant, dict) and "templates_dir" in tenant:
                tenant["templates_dir"] = resolve(tenant["templates_dir"])


def _resolve_security_files(raw: dict[str, Any], base: Path) -> None:
    """Make the relative paths of ``broker.security`` relative to ``base``, the config
    file's directory (as ``templates_dir`` and ``include:`` are)."""
    broker = raw.get("broker")
    security = broker.get("security") if isinstance(broker, dict) else None
    if not isinstance(security, dict):
        return
    for key in ("ca_file", "cert_file", "key_file"):
        value = security.get(key)
        if isinstance(value, str) and not Path(value).is_absolute():
            security[key] = str(base / value)


def parse_config(
    raw: Any,
    source: str = "<config>",
    env: os._Environ[str] | dict[str, str] | None = None,
    base_dir: Path | None = None,
) -> Config:
    """Validate an already-parsed mapping (plus environment overrides) into a Config.

    ``base_dir``: the directory relative paths in the file are relative to (the config
    file's); None: the working directory."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: (top level): expected a mapping of keys, got {type(raw).__name__}"
        )
    raw = copy.deepcopy(raw)
    overridden = _apply_overrides(raw, os.environ if env is None else env)
    if base_dir is not None:
        _resolve_templates_dirs(raw, base_dir, overridden)
        _resolve_security_files(raw, base_dir)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc, overridden)) from None
    for name, tenant in config.tenants.items():
        config.set_tenant_config(name, _tenant_config(raw, name, tenant, source))
    return config


def deep_merge(base: Any, over: Any) -> Any:
    """``over`` on top of ``base``: mappings merge key by key, anything else replaces."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return copy.deepcopy(over)
    merged = dict(base)
    for key, value in over.items():
        merged[key] = deep_merge(base.get(key), value) if key in base else copy.deepcopy(value)
    return merged


def _tenant_config(raw: dict[str, Any], name: str, tenant: TenantConfig, source: str) -> Config:
    """The defaults with the tenant's sections merged on top, validated as a whole; an
    error names the key under ``tenants.<name>``."""
    where = f"tenants.{name}"
    merged = {k: v for k, v in raw.items() if k not in ("tenants", "include")}
    extra = set(tenant.delivery or {}) - set(TENANT_DELIVERY_KEYS)
    if extra:
        key = sorted(extra)[0]
        raise ConfigError(
            f"{source}: {where}.delivery.{key}: set for the whole deployment, not per tenant"
            f" (a tenant may set {', '.join(TENANT_DELIVERY_KEYS)}; its share of the rate is"
            f" {where}.quota.rate_share)"
        )
    for section in ("policy", "delivery", "providers"):
        value = getattr(tenant, section)
        if value is not None:
            merged[section] = deep_merge(raw.get(section) or {}, value)
    if tenant.templates_dir is not None:
        merged["templates_dir"] = str(tenant.templates_dir)
    if tenant.workflows is not None:
        # By name: a tenant's workflow replaces the default's of that name, null removes it.
        base = raw.get("workflows")
        if base is None:
            base = yaml.safe_load(DEFAULT_WORKFLOWS.read_text(encoding="utf-8"))
        flows = dict(base or {})
        for flow, spec in tenant.workflows.items():
            if spec is None:
                flows.pop(flow, None)
            else:
                flows[flow] = spec
        merged["workflows"] = flows
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join([where, *(str(p) for p in err["loc"])])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; docs/tenants.md lists every key)"
            lines.append(f"{source}: {key}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: os._Environ[str] | dict[str, str] | None = None,
) -> Config:
    """Load the config from ``path``, else ``$MAILSTREAM_CONFIG``, else the defaults."""
    env = os.environ if env is None else env
    if path is None:
        path = env.get(CONFIG_ENV) or None
    if path is None:
        return parse_config({}, "<defaults>", env)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config file: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}: not valid YAML{where}: {problem}") from None
    if isinstance(raw, dict) and raw.get("include"):
        raw = _merge_includes(raw, p)
    return parse_config(raw, str(p), env, base_dir=p.parent)


def _merge_includes(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """Add the ``workflows:`` of each included file; a name defined twice is an error."""
    includes = raw.get("include")
    if not isinstance(includes, list):
        raise ConfigError(f"{path}: include: expected a list of file paths")
    merged = dict(raw.get("workflows") or {})
    for n, entry in enumerate(includes):
        where = f"{path}: include[{n}]"
        if not isinstance(entry, str):
            raise ConfigError(f"{where}: expected a file path")
        child = (path.parent / entry).resolve()
        try:
            doc = yaml.safe_load(child.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {child}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: {child} is not valid YAML: {exc}") from None
        if not isinstance(doc, dict) or set(doc) - {"workflows"}:
            raise ConfigError(f"{where}: {child} may hold only a `workflows:` mapping")
        for name, spec in (doc.get("workflows") or {}).items():
            if name in merged:
                raise ConfigError(f"{where}: workflow {name!r} is defined twice")
            merged[name] = spec
    return {**raw, "workflows": merged}
