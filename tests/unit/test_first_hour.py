"""A newcomer's first hour, the parts that need no service: the README, the Makefile and CI say the same
thing about the two commands; ``streamrec up`` chooses its feed from what is on disk; its fold summary
tells a rerun on kept state from new events; library chatter is kept out of commands' output."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from streamrec.datasets import DatasetNotFound
from streamrec.devtools.stack import (
    SHOP_EVENTS,
    Progress,
    choose_feed,
    fold_summary,
    progress_from_metrics,
)

ROOT = Path(__file__).resolve().parents[2]


def _make_help(target: str) -> str:
    """The ``## …`` line right above a Makefile target: what that command does."""
    match = re.search(rf"^## (.+)\n{target}:", (ROOT / "Makefile").read_text(), re.M)
    assert match, f"no '## …' line above the Makefile's {target} target"
    return match.group(1)


@pytest.mark.parametrize("target", ["up", "test"])
def test_the_readme_says_word_for_word_what_the_makefile_says_each_command_does(target: str) -> None:
    assert f"- `make {target}`: {_make_help(target)}\n" in (ROOT / "README.md").read_text()


def test_ci_runs_make_test_and_nothing_else() -> None:
    commands = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert commands == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', "exec make test"]


def test_make_test_installs_the_debian_packages_first() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: system-packages install lint$", makefile, re.M)
    recipe = makefile[makefile.index("\nsystem-packages:") :]
    assert "dpkg -s" in recipe and "apt-get install" in recipe and "sudo" in recipe
    assert "APT_PACKAGES := $(shell sed -e 's/\\#.*//' .ci/apt-packages)" in makefile


def test_the_install_silences_the_editable_installation_warning() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(
        r'^\tPYTHONWARNINGS="ignore:Editable installation" \$\(PY\) -m pip install', makefile, re.M
    )


# ---------------------------------------------------------------- what `streamrec up` feeds


@pytest.fixture
def no_datasets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("STREAMREC_DATASETS", str(tmp_path))
    return tmp_path


def test_no_datasets_means_the_built_in_shop_and_one_line_that_says_how_to_use_real_data(
    no_datasets: Path,
) -> None:
    feed = choose_feed("auto", None)
    assert feed.args[0] == "simulate" and "--no-ensure-topics" in feed.args
    assert feed.args[feed.args.index("--events") + 1] == str(SHOP_EVENTS)
    assert feed.note is not None and "\n" not in feed.note
    assert str(no_datasets) in feed.note
    assert "STREAMREC_DATASETS" in feed.note and "--dataset" in feed.note and "movielens-100k" in feed.note


def test_movielens_is_the_default_when_it_is_there(no_datasets: Path) -> None:
    (no_datasets / "movielens-100k").mkdir()
    feed = choose_feed("auto", 3000)
    assert feed.args == ("replay", "movielens-100k", "--no-ensure-topics", "--limit", "3000")
    assert feed.note is None


def test_limit_sizes_the_shop_and_none_feeds_nothing(no_datasets: Path) -> None:
    shop = choose_feed("shop", 500)
    assert shop.args[shop.args.index("--events") + 1] == "500" and shop.note is None
    assert choose_feed("none", None).args == ()


def test_a_dataset_asked_for_by_name_must_be_there(no_datasets: Path) -> None:
    with pytest.raises(
        DatasetNotFound, match=f"dataset movielens-100k is not in {no_datasets}: set STREAMREC_DATASETS"
    ):
        choose_feed("movielens-100k", None)
    with pytest.raises(ValueError, match="unknown dataset 'nosuch'"):
        choose_feed("nosuch", None)


# ---------------------------------------------------------------- what `streamrec up` reports


WORKER_PAGE = """\
# HELP streamrec_worker_events_total Events taken off the events topic, by type and outcome.
# TYPE streamrec_worker_events_total counter
streamrec_worker_events_total{outcome="folded",type="view"} 700.0
streamrec_worker_events_total{outcome="folded",type="purchase"} 250.0
streamrec_worker_events_total{outcome="dead_letter",type="view"} 50.0
# HELP streamrec_worker_dedupe_hits_total Folded events whose event_id had been applied before.
# TYPE streamrec_worker_dedupe_hits_total counter
streamrec_worker_dedupe_hits_total DUPS
"""


def test_progress_sums_every_worker_and_counts_duplicates_apart() -> None:
    pages = [WORKER_PAGE.replace("DUPS", "0.0"), WORKER_PAGE.replace("DUPS", "950.0")]
    progress = progress_from_metrics(pages)
    assert progress == Progress(taken=2000, folded=1900, duplicates=950)
    assert progress.new == 950


def test_a_fresh_feed_reports_its_rate() -> None:
    line = fold_summary(Progress(taken=20_000, folded=20_000, duplicates=0), 10.0, Path("/x/.streamrec"))
    assert line == "20,000 events folded into Redis 10.0s after the feed started (2,000 events/s end to end)"


def test_a_rerun_on_kept_state_says_it_was_already_folded_not_a_rate() -> None:
    line = fold_summary(Progress(taken=20_000, folded=20_000, duplicates=20_000), 2.0, Path("/x/.streamrec"))
    assert "events/s" not in line
    assert line.startswith("the feed was already folded into Redis: its 20,000 events were skipped")
    assert "/x/.streamrec" in line


def test_a_partly_new_feed_reports_only_the_new_events() -> None:
    line = fold_summary(Progress(taken=3_000, folded=3_000, duplicates=2_000), 4.0, Path("s"))
    assert line.startswith("1,000 events newly folded into Redis and 2,000 skipped as already folded")
    assert "events/s" not in line


def test_commands_keep_kafka_python_info_lines_out_of_their_output(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamrec.cli.main import _settings

    root = logging.getLogger()
    kafka = logging.getLogger("kafka")
    saved = (root.level, list(root.handlers), kafka.level)
    try:
        monkeypatch.setenv("STREAMREC_LOG_LEVEL", "INFO")
        _settings()
        assert not kafka.isEnabledFor(logging.INFO) and kafka.isEnabledFor(logging.WARNING)
        monkeypatch.setenv("STREAMREC_LOG_LEVEL", "DEBUG")
        _settings()
        assert kafka.isEnabledFor(logging.DEBUG)  # asking for everything shows everything
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        kafka.setLevel(saved[2])
