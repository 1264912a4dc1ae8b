"""The presets are complete: every study setting a stage has is named in its configs/<preset>/<stage>.json
(no study value silently comes from the code), shared settings agree across presets, and the pipeline
names every variant folder itself."""

from __future__ import annotations

import argparse
import importlib

import pytest

from fincompress import pipeline
from fincompress.common import cli


def stage_settings(module: str) -> dict[str, argparse.Action]:
    """The study settings a stage's parser has (flags taking a value; on/off switches are recipe choices)."""
    parser = importlib.import_module(module).build_parser()
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    return {key: actions[key] for key in pipeline.STUDY_SETTINGS
            if key in actions and not isinstance(actions[key], argparse._StoreTrueAction)}


def preset_values(preset: str, stage: str) -> dict:
    path = pipeline.config_path(preset, stage)
    assert path.is_file(), f"{path} missing: every preset has a file per stage"
    return cli.read_config(path)


def expected_keys(module: str, values: dict) -> set[str]:
    keys = set(stage_settings(module))
    if values.get("method") == "dynamic":  # dynamic INT8 calibrates nothing
        keys.discard("calibration_samples")
    return keys


@pytest.mark.parametrize("preset", pipeline.PRESETS)
def test_every_study_setting_is_in_the_preset_file(preset):
    missing = {}
    for spec in pipeline.STUDY:
        values = preset_values(preset, spec.name)
        absent = sorted(expected_keys(spec.module, values) - set(values))
        if absent:
            missing[spec.name] = absent
    assert not missing, f"{preset}: settings that would fall back to a code value: {missing}"


def test_presets_agree_on_every_shared_setting():
    differ = {}
    for spec in pipeline.STUDY:
        for key in pipeline.SHARED_SETTINGS:
            seen = {preset: preset_values(preset, spec.name).get(key, "<absent>") for preset in pipeline.PRESETS}
            if key in stage_settings(spec.module) and len({repr(v) for v in seen.values()}) > 1:
                differ[f"{spec.name}.{key}"] = seen
    assert not differ, f"shared settings differ between presets: {differ}"


def test_preset_values_pass_their_flags_validation():
    """Every value parses with the stage's own flag type (a typo or a wrong type fails here, not mid-study)."""
    for preset in pipeline.PRESETS:
        for spec in pipeline.STUDY:
            parser = importlib.import_module(spec.module).build_parser()
            values = preset_values(preset, spec.name)
            args = parser.parse_args(cli.config_to_argv(parser, values, f"{preset}/{spec.name}"))
            for key in expected_keys(spec.module, values) & set(values):
                if values[key] is not None and not isinstance(values[key], str):
                    assert getattr(args, key) == pytest.approx(values[key]), (preset, spec.name, key)


def test_the_completeness_check_fails_on_a_missing_setting(tmp_path, monkeypatch):
    """The check above can fail: a preset file without `lr` is reported."""
    monkeypatch.setattr(pipeline, "CONFIGS", tmp_path)
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "teacher.json").write_text('{"epochs": 1}')
    values = preset_values("smoke", "teacher")
    assert "lr" in expected_keys("fincompress.teacher.train_teacher", values) - set(values)


@pytest.mark.parametrize("preset", pipeline.PRESETS)
def test_the_pipeline_names_every_variant_folder(preset):
    for stage in pipeline.build_stages(preset):
        if stage.outputs == [pipeline.variant(stage.name)]:
            position = stage.args.index("--output-name")
            assert stage.args[position + 1] == stage.name
    pruned = next(s for s in pipeline.build_stages(preset) if s.name == "pruned_30pct")
    assert pruned.outputs == ["checkpoints/pruned_30pct"]
