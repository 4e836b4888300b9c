"""The config: the seed's YAML loads unchanged, unknown keys are named, every shipped YAML validates."""

from pathlib import Path

import pytest

from olmokit.errors import ConfigError
from olmokit.jola import JoLAConfig, JoLASettings

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "jola").glob("*.yaml"))
SEED_YAML = """\
model_config:
  pretrained_model_name_or_path: "sp-embraceable/OLMo-2-1124-13B-Instruct-32k-Context-ChatML"
  applied_module: 'attention'
  device: "cuda"

training_config:
  learning_rate: 0.005
  per_device_train_batch_size: 4  # Reduced for 13B model
  bf16: True  # Recommended for OLMo-2

jola_config:
  gate_scheduler: "expon"
  gate_lambda: 0.00004
"""


def test_seed_yaml_loads_unchanged(tmp_path):
    p = tmp_path / "config_olmo2.yaml"
    p.write_text(SEED_YAML)
    cfg = JoLAConfig.get_jola_config(default=False, config_path=p)
    assert cfg["model_config"]["pretrained_model_name_or_path"].endswith(
        "13B-Instruct-32k-Context-ChatML"
    )
    assert cfg["model_config"]["applied_module"] == "attention"
    assert cfg.training.learning_rate == 0.005 and cfg.training.per_device_train_batch_size == 4
    assert cfg.training.bf16 is True and cfg.base_dtype() == "bfloat16"
    assert cfg.jola.gate_scheduler == "expon" and cfg.jola.gate_lambda == 4e-5
    # the shipped copy is the seed's file verbatim
    shipped = next(c for c in CONFIGS if c.name == "config_olmo2.yaml")
    assert shipped.read_text() == SEED_YAML


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    JoLAConfig.from_yaml(path)


def test_unknown_keys_list_valid_ones(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("jola_config:\n  gate_lamda: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'jola_config.gate_lamda'.*gate_lambda"):
        JoLAConfig.from_yaml(p)
    p.write_text("trainer_config: {}\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'trainer_config'.*model_config.*training_config"
    ):
        JoLAConfig.from_yaml(p)


def test_bad_values():
    with pytest.raises(ConfigError, match="applied_module"):
        JoLAConfig.from_dict({"model_config": {"applied_module": "mlp"}})
    with pytest.raises(ConfigError, match="gate_scheduler"):
        JoLAConfig.from_dict({"jola_config": {"gate_scheduler": "sometimes"}})
    with pytest.raises(ConfigError, match="stretch_limits"):
        JoLASettings.from_dict({"stretch_limits": [0.1, 1.1]})
    with pytest.raises(ConfigError, match="topk"):
        JoLASettings.from_dict({"eval_gate_mode": "topk"})


def test_overrides_and_defaults():
    cfg = JoLAConfig().merge(["training_config.max_steps=5", "jola_config.penalty=mixing"])
    assert cfg.training.max_steps == 5 and cfg.jola.penalty == "mixing"
    d = JoLAConfig()
    # the reference's low-resource protocol
    assert (d.training.learning_rate, d.training.warmup_steps, d.training.num_train_epochs) == (
        5e-3,
        50,
        20,
    )
    assert (d.data.train_size, d.data.eval_size, d.training.early_stopping_patience) == (
        200,
        200,
        2,
    )
    assert d.jola.temperature == 0.33 and tuple(d.jola.stretch_limits) == (-0.1, 1.1)
    with pytest.raises(ConfigError):
        JoLAConfig.get_jola_config()
