import json

import pytest

from reid.config import (
    DEFAULTS,
    ConfigError,
    config_from_dict,
    diff_from_defaults,
    get_defaults,
    load_config,
    save_config,
)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_no_file_gives_defaults_and_is_json_serialisable():
    cfg = load_config(None)
    assert cfg == DEFAULTS
    assert cfg is not DEFAULTS
    json.dumps(cfg)


def test_defaults_are_not_shared_between_loads():
    original_pad = DEFAULTS["data"]["aug"]["pad"]
    first = load_config(None)
    first["data"]["aug"]["pad"] = original_pad + 1
    first["solver"]["milestones"].append(1000)
    second = load_config(None)
    assert second["data"]["aug"]["pad"] == original_pad == get_defaults()["data"]["aug"]["pad"]
    assert 1000 not in second["solver"]["milestones"] and 1000 not in DEFAULTS["solver"]["milestones"]


def test_recursive_inheritance_order_and_deep_merge(tmp_path):
    write(tmp_path / "root.yml", "seed: 1\ndata:\n  height: 100\n  width: 50\n")
    write(tmp_path / "other.yml", "seed: 2\nsolver: {epochs: 7}\n")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "mid.yml", "_base_: ../root.yml\ndata: {height: 200}\n")
    child = write(
        tmp_path / "sub" / "child.yml",
        "_base_: [mid.yml, ../other.yml]\ndata: {aug: {pad: 3}}\nsolver: {epochs: 9}\n",
    )
    cfg = load_config(child, ["solver.epochs=11"])
    assert cfg["seed"] == 2  # the later base wins over the earlier one
    assert cfg["data"]["height"] == 200  # mid overrides root
    assert cfg["data"]["width"] == 50  # from root, untouched by mid
    assert cfg["data"]["aug"] == {**DEFAULTS["data"]["aug"], "pad": 3}  # deep merge keeps siblings
    assert cfg["solver"]["epochs"] == 11  # overrides beat files
    assert "_base_" not in cfg


def test_override_value_parsing():
    cfg = load_config(
        None,
        [
            "solver.milestones=[20,40]",
            "model.gdfl.enabled=true",
            "model.pretrained=none",
            "model.gdfl.proj_dim=512",
            "solver.amp=off",
            "solver.base_lr=1e-4",
            "solver.grad_clip=3",
            "output_dir=2024",
            "data.aug={pad: 4}",
        ],
    )
    assert cfg["solver"]["milestones"] == [20, 40]
    assert cfg["model"]["gdfl"]["enabled"] is True
    assert cfg["model"]["pretrained"] == "none"
    assert cfg["model"]["gdfl"]["proj_dim"] == 512
    assert cfg["solver"]["amp"] == "off"
    assert cfg["solver"]["base_lr"] == pytest.approx(1e-4)
    assert isinstance(cfg["solver"]["grad_clip"], float)
    assert cfg["output_dir"] == "2024"
    assert cfg["data"]["aug"] == {**DEFAULTS["data"]["aug"], "pad": 4}
    unset = load_config(None, ["model.gdfl.proj_dim=512", "model.gdfl.proj_dim=null"])
    assert unset["model"]["gdfl"]["proj_dim"] is None


def test_yaml_1_1_pitfalls_in_files(tmp_path):
    path = write(tmp_path / "c.yml", "solver:\n  amp: off\n  base_lr: 1e-4\nmodel:\n  pretrained: none\n")
    cfg = load_config(path)
    assert cfg["solver"]["amp"] == "off"
    assert cfg["solver"]["base_lr"] == pytest.approx(1e-4)
    assert cfg["model"]["pretrained"] == "none"


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("model.gdfl.enabld=true", "did you mean 'model.gdfl.enabled'"),
        ("gdfl.taps=[layer3]", "did you mean 'model.gdfl.taps'"),
        ("solver.lr=0.1", "did you mean 'solver.base_lr'"),  # a sibling key, never the section 'solver'
        ("solver.milestones=30", "expects a list"),
        ("solver.milestones=[a, b]", "'solver.milestones' expects an integer"),
        ("seed=1.5", "'seed' expects an integer"),
        ("model.gdfl.enabled=yes", "true/false"),
        ("model.gdfl.proj_dim=none", "write null"),
        ("solver.amp=of", "must be one of"),
        ("data.aug=3", "'data.aug' must be a mapping"),
        ("seed", "KEY=VALUE"),
        ("seed=[1", "invalid YAML"),
    ],
)
def test_bad_overrides_name_the_problem(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert fragment in str(info.value)
    assert override in str(info.value)


def test_unknown_key_in_file_names_file_and_suggests(tmp_path):
    path = write(tmp_path / "typo.yml", "data:\n  ids_per_bach: 8\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "typo.yml" in message and "data.ids_per_bach" in message and "data.ids_per_batch" in message


def test_inheritance_cycle_is_detected(tmp_path):
    write(tmp_path / "a.yml", "_base_: b.yml\nseed: 1\n")
    write(tmp_path / "b.yml", "_base_: c.yml\n")
    write(tmp_path / "c.yml", "_base_: a.yml\n")
    with pytest.raises(ConfigError, match="cyclic") as info:
        load_config(tmp_path / "a.yml")
    assert all(name in str(info.value) for name in ("a.yml", "b.yml", "c.yml"))


def test_diamond_inheritance_is_not_a_cycle(tmp_path):
    write(tmp_path / "common.yml", "seed: 5\n")
    write(tmp_path / "left.yml", "_base_: common.yml\n")
    write(tmp_path / "right.yml", "_base_: common.yml\n")
    top = write(tmp_path / "top.yml", "_base_: [left.yml, right.yml]\n")
    assert load_config(top)["seed"] == 5


def test_missing_base_names_the_referring_file(tmp_path):
    path = write(tmp_path / "child.yml", "_base_: nowhere.yml\n")
    with pytest.raises(FileNotFoundError) as info:
        load_config(path)
    assert "nowhere.yml" in str(info.value) and "child.yml" in str(info.value)


def test_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "absent.yml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path / "list.yml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="_base_ must be"):
        load_config(write(tmp_path / "base.yml", "_base_: 3\n"))
    assert load_config(write(tmp_path / "empty.yml", "")) == DEFAULTS


def test_save_round_trip_and_diff(tmp_path):
    overrides = ["solver.amp=off", "model.pretrained=none", "solver.base_lr=2e-5", "test.rerank.enabled=true"]
    cfg = load_config(None, overrides)
    target = tmp_path / "run" / "config.yaml"
    save_config(cfg, target)
    assert load_config(target) == cfg
    assert diff_from_defaults(cfg) == {
        "model.pretrained": "none",
        "solver.base_lr": pytest.approx(2e-5),
        "solver.amp": "off",
        "test.rerank.enabled": True,
    }
    assert [p.name for p in target.parent.iterdir()] == ["config.yaml"]  # no temporary file left behind


def test_config_from_dict_validates_and_fills_defaults():
    cfg = config_from_dict({"model": {"backbone": "resnet18"}}, source="checkpoint.pth")
    assert cfg["model"]["backbone"] == "resnet18" and cfg["solver"] == DEFAULTS["solver"]
    with pytest.raises(ConfigError, match="checkpoint.pth.*model.backbon"):
        config_from_dict({"model": {"backbon": "resnet18"}}, source="checkpoint.pth")
