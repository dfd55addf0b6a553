"""The README is a front page and the rest is a documentation site whose reference pages cannot drift:
the site is built here with ``mkdocs build --strict``, and every setting, every endpoint of the app's URL
map and every command of the typer app must be on its generated pages."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from streamrec.api.app import create_app
from streamrec.api.openapi import documented_rules
from streamrec.devtools import docs_site
from streamrec.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAX_README_LINES = 250


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole site, built as ``make test`` builds it (a subprocess: mkdocs' own warnings are its business)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _page(site: Path, generated: str) -> str:
    """A built page's HTML, entities decoded, for a generated page's source path (``reference/api.md``)."""
    return html.unescape((site / generated.removesuffix(".md") / "index.html").read_text())


def _env_vars(model: type[BaseSettings], prefix: str = "") -> Iterator[str]:
    """Every environment variable of a settings model, nested settings models included (their own prefix)."""
    prefix = model.model_config.get("env_prefix", prefix)
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseSettings):
            yield from _env_vars(kind)
        else:
            yield f"{prefix}{name}".upper()


# ---------------------------------------------------------------- the README


def test_the_readme_is_a_front_page_of_at_most_250_lines() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move the rest into docs/"


def test_every_relative_link_of_the_readme_resolves_on_github_too() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    local = [link for link in links if "://" not in link and not link.startswith("mailto:")]
    assert local, "the README links into the site's pages"
    assert [link for link in local if not (ROOT / link).exists()] == []


def test_the_site_tours_the_api_with_the_readme_s_curls_word_for_word() -> None:
    """tests/e2e/test_up.py runs the README's curls against a live stack; the site's copy must be that one."""

    def curls(text: str) -> str:
        block = text[text.index("Every answer is `{") :]
        return block[block.index("```bash\n") : block.index("```\n", block.index("```bash\n") + 8)]

    assert curls((ROOT / "docs" / "getting-started.md").read_text()) == curls(README.read_text())


# ---------------------------------------------------------------- generated pages


def test_generated_pages_are_not_committed() -> None:
    committed = [page for page in docs_site.generated_pages() if (ROOT / "docs" / page).exists()]
    assert committed == [], "these are made at build time by devtools/docs_site.py"


def test_every_setting_is_on_the_settings_page(site: Path) -> None:
    page = _page(site, docs_site.SETTINGS_PAGE)
    variables = list(_env_vars(Settings))
    assert len(variables) > 70 and "STREAMREC_SCORING_WEIGHT_VIEW" in variables
    assert [var for var in variables if f"<code>{var}</code>" not in page] == []


def test_every_endpoint_is_on_the_api_page(site: Path) -> None:
    page = _page(site, docs_site.API_PAGE)
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", api_change_feed=False))
    routes = {(path, method) for path, method, _ in documented_rules(app)}
    assert len(routes) > 20 and ("/v1/events", "post") in routes
    missing = [
        (method, path)
        for path, method in sorted(routes)
        if f"<code>{docs_site.operation_heading(method, path).strip('`')}</code>" not in page
    ]
    assert missing == []
    assert (site / docs_site.OPENAPI_FILE).exists()


def test_every_command_is_on_the_cli_page(site: Path) -> None:
    page = _page(site, docs_site.CLI_PAGE)
    commands = docs_site.cli_commands()
    assert {"up", "settings", "model activate", "dlq replay", "state rewind-offsets"} <= set(commands)
    assert [c for c in commands if f"<code>streamrec {c}</code>" not in page] == []


def test_every_command_has_a_line_in_the_hand_written_overview() -> None:
    overview = (ROOT / "docs" / "reference" / "commands.md").read_text()
    top = sorted({c.split()[0] for c in docs_site.cli_commands()})
    assert [c for c in top if f"| `streamrec {c}" not in overview] == []


def test_a_generated_page_shows_defaults_whatever_the_shell_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_API_PORT", "9999")
    monkeypatch.setenv("STREAMREC_SCORING_HISTORY_LEN", "7")
    page = docs_site.settings_page()
    assert "| `STREAMREC_API_PORT` | `8000` |" in page
    assert "| `STREAMREC_SCORING_HISTORY_LEN` | `30` |" in page
    assert os.environ["STREAMREC_API_PORT"] == "9999"  # put back afterwards
