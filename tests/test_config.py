"""Config schema: defaults in code, presets, overrides, and errors that name the key."""

from pathlib import Path

import pytest

from cdra_ray.config import ConfigError, load_config, to_yaml
from cdra_ray.config.loading import PRESET_DIR
from cdra_ray.config.schema import Config


def test_defaults_match_the_paper_where_it_is_explicit():
    config = load_config()
    assert config.rollout.group_size == 5  # G = 5 (paper §3.1)
    assert config.rollout.temperature == 1.0  # sampling temperature 1.0 (paper §3.1)
    assert config.algorithm.clip_eps == 0.2
    assert config.train.total_updates == 400  # best checkpoint within 400 steps
    assert config.algorithm.advantage == "cdpa" and config.algorithm.normalize == "position"


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_every_preset_loads(preset):
    assert isinstance(load_config(preset), Config)


def test_paper_preset_is_the_papers_setting():
    config = load_config("paper_qwen7b_4gpu")
    assert "Qwen2.5-7B-Instruct" in config.model.policy
    assert (config.rollout.group_size, config.rollout.temperature, config.train.total_updates) == (5, 1.0, 400)
    lc = config.learner  # 2 learner ranks + the reference beside one of them
    gpus = config.rollout.num_gpus + config.reward.num_gpus + lc.num_ranks * lc.num_gpus + lc.reference_num_gpus
    assert lc.num_ranks == 2 and gpus <= 4


def test_overrides_apply_with_types():
    config = load_config("cpu_demo", ["train.total_updates=7", "train.max_staleness=1", "rollout.engine=hf"])
    assert config.train.total_updates == 7 and config.train.max_staleness == 1 and config.rollout.engine == "hf"


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match="train.totl_updates"):
        load_config(None, ["train.totl_updates=3"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="rollout.group_size"):
        load_config(None, ["rollout.group_size=five"])


def test_typo_in_yaml_names_file_and_key(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("reward:\n  knd: pers_genprm\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert "bad.yaml" in str(err.value) and "knd" in str(err.value)


@pytest.mark.parametrize(
    "override, key",
    [("rollout.engine=tpu", "rollout.engine"), ("rollout.group_size=1", "rollout.group_size"),
     ("algorithm.aggregation=sum", "algorithm.aggregation"), ("learner.zero_stage=4", "learner.zero_stage"),
     ("rollout.top_p=0", "rollout.top_p"), ("train.max_staleness=-1", "train.max_staleness"),
     ("reward.dtype=fp8", "reward.dtype"), ("reward.kv_block_size=40", "reward.kv_block_size")],
)
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_override_without_equals_is_explained():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.total_updates"])


def test_resolved_yaml_round_trips(tmp_path: Path):
    config = load_config("cpu_demo", ["train.total_updates=2"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(config))
    assert load_config(str(path)) == config


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="cpu_demo"):
        load_config("no_such_preset")
