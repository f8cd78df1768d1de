"""`csad demo` refuses, and leaves alone, a demo run made with other settings."""

import dataclasses

import pytest

from csad_jax import demo
from csad_jax.config import fast_config, write_config
from csad_jax.errors import ConfigError


def test_previous_demo_with_other_settings_is_refused_untouched(tmp_path):
    config = fast_config()
    demo._check_previous_demo(tmp_path, config)  # nothing there yet
    path = write_config(tmp_path / "config.json", config)
    demo._check_previous_demo(tmp_path, config)  # same settings: resumable
    write_config(path, dataclasses.replace(config, batch_size=config.batch_size + 1))
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="other settings.*another --out"):
        demo._check_previous_demo(tmp_path, config)
    assert path.read_bytes() == before
