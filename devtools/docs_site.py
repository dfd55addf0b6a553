"""The documentation site's reference pages, made from the code at every build so that they cannot drift.

mkdocs runs this file as a hook (``hooks:`` in ``mkdocs.yml``); ``on_files`` adds three generated pages,
which are never committed:

- ``reference/api.md``: the HTTP API, from the OpenAPI document the API serves at ``/openapi.json``
  (``create_app(...).extensions["streamrec.openapi"]``, which needs no Redis), and that document itself
  as ``reference/openapi.json``;
- ``reference/cli.md``: every ``streamrec`` command, from the typer app, by typer's own docs generator;
- ``reference/settings.md``: every setting, from the settings models, by the code behind
  ``streamrec settings`` (``streamrec.settings.describe``), with the defaults rather than this shell's values.

Each page is made with every ``STREAMREC_*`` variable of the building shell set aside, so a build shows
the defaults whatever the environment holds. ``tests/unit/test_docs_site.py`` checks that every setting,
documented operation and command is on the pages.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

ENV_PREFIX = "STREAMREC_"
API_PAGE = "reference/api.md"
OPENAPI_FILE = "reference/openapi.json"
CLI_PAGE = "reference/cli.md"
SETTINGS_PAGE = "reference/settings.md"

# the OpenAPI document's tags (a view's blueprint), as section titles; an unknown tag keeps its name
TAG_TITLES = {
    "v1": "Shop: events, catalog and recommendations",
    "admin": "Admin: batch models",
    "admin_placements": "Admin: placements",
    "admin_experiments": "Admin: experiments",
    "observability": "Metrics",
    "docs": "This document",
}


@contextlib.contextmanager
def defaults_only() -> Iterator[None]:
    """Set every ``STREAMREC_*`` environment variable aside meanwhile: what is built shows the defaults."""
    saved = {name: value for name, value in os.environ.items() if name.startswith(ENV_PREFIX)}
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(saved)


def text(value: object) -> str:
    """Plain text for a Markdown page or table cell: HTML and Markdown's own characters escaped."""
    out = html.escape(str(value), quote=False).replace("\n", " ")
    for char in "\\`*_[]|":
        out = out.replace(char, "\\" + char)
    return out


def code(value: object) -> str:
    """``value`` as inline code; an empty value is said in words."""
    shown = str(value)
    if not shown:
        return "*(empty)*"
    fence = "``" if "`" in shown else "`"
    return f"{fence}{shown.replace('|', '&#124;')}{fence}"


# ---------------------------------------------------------------- HTTP API


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document the API serves, built from the Flask app with the default settings."""
    from streamrec.api.app import create_app
    from streamrec.settings import Settings

    security_log = logging.getLogger("streamrec.api.security")
    level = security_log.level
    security_log.setLevel(logging.ERROR)  # "no API keys configured" is about serving, not documenting
    try:
        with defaults_only():
            settings = Settings(redis_url="redis://127.0.0.1:1/0", api_change_feed=False)
            app = create_app(settings)  # the document needs no Redis; without the feed, no thread starts
    finally:
        security_log.setLevel(level)
    return app.extensions["streamrec.openapi"]  # type: ignore[no-any-return]


def schema_anchor(name: str) -> str:
    """The page anchor of a schema in the Schemas section."""
    return f"schema-{name.lower()}"


def number(value: float) -> str:
    """A bound as read: whole numbers without ``.0``, very large round ones in exponent form (1e+15)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and abs(value) >= 10**13 and value % 10**12 == 0:
        return f"{value:g}"
    return str(value)


def schema_text(schema: dict[str, Any]) -> str:
    """A JSON Schema in a few words of Markdown: named schemas as links, bounds in brackets."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{schema_anchor(name)})"
    for key, joiner in (("oneOf", " or "), ("anyOf", " or "), ("allOf", " and ")):
        if key in schema:
            return joiner.join(schema_text(s) for s in schema[key])
    if "const" in schema:
        return code(json.dumps(schema["const"]))
    if "enum" in schema:
        return "one of " + ", ".join(code(json.dumps(v)) for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "string" and schema.get("maxLength") == 0:
        return "empty string"
    if kind == "array":
        out = f"array of {schema_text(schema.get('items', {}))}"
    elif isinstance(kind, list):
        out = " or ".join(kind)
    else:
        out = str(kind)
    bounds = [
        f"{label} {number(schema[key])}"
        for key, label in (
            ("minLength", "≥"),
            ("maxLength", "≤"),
            ("minimum", "≥"),
            ("maximum", "≤"),
            ("exclusiveMinimum", ">"),
            ("exclusiveMaximum", "<"),
            ("minItems", "≥"),
            ("maxItems", "≤"),
        )
        if key in schema
    ]
    unit = {"string": " characters", "array": " items"}.get(str(kind), "")
    if bounds:
        out += f" ({', '.join(bounds)}{unit})"
    if "pattern" in schema:
        out += ", pattern"
    return out


def _parameter_schema(param: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema: its own, or that of its JSON content (``filter=``, a JSON document)."""
    if "schema" in param:
        return param["schema"]  # type: ignore[no-any-return]
    return next(iter(param["content"].values()))["schema"]  # type: ignore[no-any-return]


def _body_schema(part: dict[str, Any]) -> dict[str, Any] | None:
    content = part.get("content") or {}
    return next(iter(content.values())).get("schema") if content else None


def operation_heading(method: str, path: str) -> str:
    """How an operation is named on the page (and found by the test)."""
    return f"`{method.upper()} {path}`"


def _operation(path: str, method: str, op: dict[str, Any]) -> list[str]:
    lines = [
        f"### {operation_heading(method, path)} {{#op-{op['operationId']}}}",
        "",
        text(op["summary"]),
        "",
    ]
    if op.get("security"):
        lines += [
            "Needs an API key (`Authorization: Bearer …` or `X-API-Key: …`) once keys are configured; "
            "see [API keys](../operations/index.md#reliability-and-security).",
            "",
        ]
    params = op.get("parameters", [])
    if params:
        lines += ["| parameter | in | type | meaning |", "|---|---|---|---|"]
        for p in params:
            name = code(p["name"]) + (" (required)" if p.get("required") else "")
            lines.append(
                f"| {name} | {p['in']} | {schema_text(_parameter_schema(p))} | {text(p.get('description', ''))} |"
            )
        lines.append("")
    if "requestBody" in op:
        body = _body_schema(op["requestBody"])
        kinds = ", ".join(code(k) for k in op["requestBody"].get("content", {}))
        lines += [f"Body ({kinds}): {schema_text(body or {})}", ""]
    lines += ["| status | meaning | body |", "|---|---|---|"]
    for status, answer in sorted(op["responses"].items()):
        body = _body_schema(answer)
        data = (body or {}).get("properties", {}).get("data")
        shown = schema_text(data) if data else (schema_text(body) if body else "")
        lines.append(f"| {status} | {text(answer.get('description', ''))} | {shown} |")
    return [*lines, ""]


def _schema_section(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"### {name} {{#{schema_anchor(name)}}}", ""]
    if schema.get("description"):
        lines += [text(schema["description"]), ""]
    props = schema.get("properties", {})
    if props:
        required = set(schema.get("required", []))
        lines += ["| field | type | meaning |", "|---|---|---|"]
        for field, sub in props.items():
            label = code(field) + (" (required)" if field in required else "")
            lines.append(f"| {label} | {schema_text(sub)} | {text(sub.get('description', ''))} |")
    else:
        lines.append(schema_text(schema))
    return [*lines, ""]


def api_page(doc: dict[str, Any]) -> str:
    """The HTTP API reference page: every operation of ``doc`` under its tag, then every schema."""
    lines = [
        "# HTTP API: endpoints",
        "",
        "Generated at build time from the OpenAPI 3.1 document the API serves at `GET /openapi.json` "
        f"(the same document, with the default settings: [openapi.json](openapi.json)). {text(doc['info']['description'])} "
        "Error codes, ids, caching, CORS and compressed bodies: [conventions](http.md).",
        "",
    ]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            by_tag.setdefault(op.get("tags", ["other"])[0], []).append((path, method, op))
    order = [t for t in TAG_TITLES if t in by_tag] + sorted(set(by_tag) - set(TAG_TITLES))
    for tag in order:
        lines += [f"## {TAG_TITLES.get(tag, tag)}", ""]
        for path, method, op in by_tag[tag]:
            lines += _operation(path, method, op)
    lines += ["## Schemas", ""]
    for name, schema in doc["components"]["schemas"].items():
        lines += _schema_section(name, schema)
    return "\n".join(lines)


def documented_operations(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, method) of every operation in ``doc``."""
    return [(path, method) for path, methods in doc["paths"].items() for method in methods]


# ---------------------------------------------------------------- CLI


def cli_commands() -> list[str]:
    """Every command of the ``streamrec`` typer app as typed, group commands included ("model activate")."""
    import typer

    from streamrec.cli.main import app

    out: list[str] = []

    def walk(command: Any, prefix: str) -> None:
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            out.append(f"{prefix}{name}")
            walk(sub, f"{prefix}{name} ")

    walk(typer.main.get_command(app), "")
    return out


def cli_page() -> str:
    """The CLI reference page: typer's own Markdown for every command, options and defaults."""
    import typer
    from typer.cli import get_docs_for_click

    from streamrec.cli.main import app

    command = typer.main.get_command(app)
    ctx = typer.Context(command, info_name="streamrec")
    with defaults_only():
        body = get_docs_for_click(obj=command, ctx=ctx, name="streamrec", title="CLI reference")
    head, _, rest = body.partition("\n")
    intro = (
        "Generated at build time from the typer app (`streamrec.cli.main:app`) by typer's own docs "
        "generator: what `streamrec COMMAND --help` prints. What each command is for, the datasets "
        "`replay` knows and how errors are reported: [the streamrec command](commands.md)."
    )
    return f"{head}\n\n{intro}\n{rest.rstrip()}\n"


# ---------------------------------------------------------------- settings


def settings_groups() -> list[tuple[str, str, list[tuple[str, Any, str]]]]:
    """(title, what they are, [(variable, default, meaning)]) per settings model, as ``streamrec settings``
    lists them (``describe``), with no ``STREAMREC_*`` variable set."""
    from streamrec.settings import ScoringSettings, Settings, TrainerSettings, describe

    with defaults_only():
        models = [
            ("Deployment", "Where the programs connect, how they serve and log.", Settings()),
            (
                "Scoring",
                "How events become scores. The worker and the API must run with the same "
                "`STREAMREC_SCORING_*` values (the worker writes with them, the API reads with them).",
                ScoringSettings(),
            ),
            ("Trainer", "The batch trainer (`streamrec train`).", TrainerSettings()),
        ]
        return [(title, what, describe(model)) for title, what, model in models]


def settings_page() -> str:
    """The settings reference page: every environment variable, its default and its meaning."""
    lines = [
        "# Settings",
        "",
        "Every setting is an environment variable. This page is generated at build time from the settings "
        "models (`streamrec/settings.py`) and shows the defaults; `streamrec settings` prints the same "
        "table with the values in force in your shell (API keys shown as `**********`).",
        "",
    ]
    for title, what, rows in settings_groups():
        lines += [f"## {title}", "", what, "", "| variable | default | meaning |", "|---|---|---|"]
        lines += [f"| {code(var)} | {code(value)} | {text(doc)} |" for var, value, doc in rows]
        lines.append("")
    return "\n".join(lines)


def settings_variables() -> list[str]:
    """The environment variable of every setting."""
    return [var for _, _, rows in settings_groups() for var, _, _ in rows]


# ---------------------------------------------------------------- the mkdocs hook


def generated_pages() -> dict[str, Callable[[], str]]:
    """Each generated file's path in the site, and how to make its content."""
    doc: dict[str, Any] = {}

    def document() -> dict[str, Any]:
        if not doc:
            doc.update(openapi_document())
        return doc

    return {
        API_PAGE: lambda: api_page(document()),
        OPENAPI_FILE: lambda: json.dumps(document(), indent=2, ensure_ascii=False) + "\n",
        CLI_PAGE: cli_page,
        SETTINGS_PAGE: settings_page,
    }


def on_files(files: Any, config: Any) -> Any:
    """The mkdocs files event: add the generated pages to the site (a committed file of that name is an error)."""
    from mkdocs.exceptions import PluginError
    from mkdocs.structure.files import File

    for path, make in generated_pages().items():
        if files.get_file_from_path(path) is not None:
            raise PluginError(f"docs/{path} is generated at build time (devtools/docs_site.py): delete it")
        files.append(File.generated(config, path, content=make()))
    return files
