"""Settings: defaults from the environment, set and override, unknown names rejected."""

import os
import subprocess
import sys

import pytest

import tsol


def test_override_restores_previous_settings():
    before = tsol.config.get()
    with tsol.config.override(num_threads=1, deterministic=True) as s:
        assert s.num_threads == 1 and tsol.config.get().deterministic
    assert tsol.config.get() == before


def test_unknown_setting_is_an_argument_error():
    with pytest.raises(tsol.ArgumentError, match="unknown setting"):
        tsol.config.set(not_a_setting=1)


def test_environment_variables_are_read_once_at_import(tmp_path):
    env = dict(os.environ, TSOL_CACHE_DIR=str(tmp_path), TSOL_DETERMINISTIC="1",
               TSOL_CHECK_VALUES="1")
    code = ("import tsol; s = tsol.config.get(); print(s.cache_dir, s.deterministic, "
            "s.check_values)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(tmp_path), "True", "True"]


def test_every_setting_is_documented():
    import dataclasses
    import inspect
    source = inspect.getsource(tsol.config.Settings)
    for f in dataclasses.fields(tsol.config.Settings):
        after = source.split(f"{f.name}:", 1)[1].split("\n", 2)[1]
        assert '"""' in after, f"setting {f.name} has no docstring"
