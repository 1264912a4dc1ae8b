"""Stage command lines: flag types, `--config` files, and every preset's config against its stage's flags."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import pytest

from fincompress import pipeline
from fincompress.common import cli
from fincompress.common.paths import FinCompressError


def small_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stage")
    parser.add_argument("--lr", type=cli.positive_float, default=1e-3)
    parser.add_argument("--max-steps", type=cli.positive_int, default=None)
    parser.add_argument("--distill", action="store_true")
    parser.add_argument("--model", default="x")
    return parser


@pytest.mark.parametrize(("flag_type", "text"), [
    (cli.positive_int, "0"), (cli.positive_int, "-1"), (cli.positive_int, "1.5"), (cli.non_negative_int, "-1"),
    (cli.positive_float, "0"), (cli.positive_float, "nan"), (cli.positive_float, "inf"), (cli.fraction, "1.01"),
    (cli.open_fraction, "1"), (cli.open_fraction, "0"), (cli.sample_fraction, "0"), (cli.non_negative_float, "-0.1"),
])
def test_flag_types_refuse_out_of_range_values(flag_type, text):
    with pytest.raises(argparse.ArgumentTypeError):
        flag_type(text)


def test_flag_types_accept_their_range():
    assert cli.positive_int("3") == 3 and cli.non_negative_int("0") == 0 and cli.fraction("1") == 1.0
    assert cli.open_fraction("0.5") == 0.5 and cli.sample_fraction("1") == 1.0 and cli.positive_float("2e-5") == 2e-5


def test_config_values_are_validated_and_flags_override_them(tmp_path):
    config = tmp_path / "stage.json"
    config.write_text(json.dumps({"_comment": "documented", "lr": 5e-5, "max_steps": 7, "distill": True}))
    args = cli.parse_args(small_parser(), ["--config", str(config), "--max-steps", "3"])
    assert (args.lr, args.max_steps, args.distill, args.model) == (5e-5, 3, True, "x")
    assert args.config_values == {"lr": 5e-5, "max_steps": 7, "distill": True}

    config.write_text(json.dumps({"max_steps": 0}))
    with pytest.raises(SystemExit) as exit_info:  # argparse: one line on stderr, exit 2
        cli.parse_args(small_parser(), ["--config", str(config)])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(("content", "message"), [
    ('{"learning_rate": 1}', "unknown setting 'learning_rate'"),
    ("[1, 2]", "expected a JSON object"),
    ("{not json", "not valid UTF-8 JSON"),
    ('{"distill": "yes"}', "must be true or false"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, content, message):
    config = tmp_path / "stage.json"
    config.write_text(content)
    with pytest.raises(FinCompressError, match=message):
        cli.parse_args(small_parser(), ["--config", str(config)])
    with pytest.raises(FinCompressError, match="file not found"):
        cli.parse_args(small_parser(), ["--config", str(tmp_path / "missing.json")])


def test_asset_references_resolve_inside_values(monkeypatch, tmp_path):
    import fincompress.common.assets as assets

    monkeypatch.setattr(assets, "asset_file", lambda relative, download=True: tmp_path / relative)
    assert cli.resolve_asset_value("pretrained:assets:models/m") == f"pretrained:{tmp_path / 'models/m'}"
    assert cli.resolve_asset_value("ProsusAI/finbert") == "ProsusAI/finbert"
    args = cli.parse_args(small_parser(), ["--model", "assets:models/m"])  # on the command line too
    assert args.model == str(tmp_path / "models/m")
    parser = small_parser()
    parser.add_argument("--data-dir", type=Path)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data_dir": "assets:data/d"}))
    args = cli.parse_args(parser, ["--config", str(config)])  # a folder flag from a config file
    assert args.data_dir == tmp_path / "data/d"


def test_an_asset_a_flag_overrides_is_never_looked_up(monkeypatch, tmp_path):
    import fincompress.common.assets as assets

    def missing(relative, download=True):
        raise assets.AssetsUnavailable(f"{relative} is not here")

    monkeypatch.setattr(assets, "asset_file", missing)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": "assets:models/m", "lr": 0.1}))
    args = cli.parse_args(small_parser(), ["--config", str(config), "--model", str(tmp_path)])
    assert args.model == str(tmp_path) and args.lr == 0.1
    with pytest.raises(FinCompressError, match="models/m is not here"):
        cli.parse_args(small_parser(), ["--config", str(config)])


@pytest.mark.parametrize("preset", pipeline.PRESETS)
def test_every_preset_config_names_real_flags_of_its_stage(preset, monkeypatch):
    """A misspelt setting in a preset fails here, not in a user's GPU session."""
    monkeypatch.setattr(cli, "resolve_asset_value", lambda value: value)
    for stage in pipeline.build_stages(preset, quick=True):
        assert stage.config is not None and stage.config.is_file(), stage.name
        parser = importlib.import_module(stage.module).build_parser()
        parser.add_argument("--config")
        argv = cli.config_to_argv(parser, cli.read_config(stage.config), str(stage.config)) + stage.args
        parser.parse_known_args(argv)  # values of the right type, else SystemExit
        unknown = parser.parse_known_args(argv)[1]
        assert not unknown, (stage.name, unknown)


def test_ci_script_has_no_check_that_cannot_fail():
    """`.ci/run` runs under `set -e`: a check followed by `|| true` could never fail CI."""
    from fincompress.common.paths import REPO_ROOT

    script = (REPO_ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in script
    assert "python -m pip check" in script
    assert "|| true" not in script


def test_pytest_silences_no_whole_warning_category():
    """Filters name one known third-party message each; a blanket ignore would hide library API drift."""
    import tomllib

    from fincompress.common.paths import REPO_ROOT

    filters = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"].get(
        "filterwarnings", [])
    for entry in filters:
        action, _, rest = entry.partition(":")
        message = rest.split(":")[0]
        assert action != "ignore" or message.strip(), f"blanket filter {entry!r}: name the message it silences"
