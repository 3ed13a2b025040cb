import pytest
import yaml

from dtgnet.cli import main
from dtgnet.config import Config, field_docs, load_config
from dtgnet.errors import ConfigError


def write(tmp_path, tree):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(tree))
    return p


def test_yaml_and_overrides(tmp_path):
    p = write(tmp_path, {"optim": {"lr": 0.01}, "teachers": [{"name": "a"}, {"name": "b", "weight": 0.5}]})
    cfg = load_config(p, ["optim.epochs=3", "teachers.1.weight=0.25", "data.flip=false"], check_paths=False)
    assert cfg.optim.lr == 0.01 and cfg.optim.epochs == 3
    assert [t.name for t in cfg.teachers] == ["a", "b"] and cfg.teachers[1].weight == 0.25
    assert cfg.teachers[0].source == "efficientnet_lite0"  # defaults fill unnamed teacher fields
    assert cfg.data.flip is False


@pytest.mark.parametrize("override, key", [
    (["optim.lrr=1"], "optim.lrr"),
    (["optim.lr=fast"], "optim.lr"),
    (["optim.lr=-1"], "optim.lr"),
    (["optim.epochs=1.5"], "optim.epochs"),
    (["loss.form=hinge"], "loss.form"),
    (["data.label_fraction=0"], "data.label_fraction"),
    (["teachers.3.weight=1"], "teachers.3"),
    (["student.arch=vit"], "student.arch"),
    (["data.flip=maybe"], "data.flip"),
    (["loss.regression_weight=-0.5"], "loss.regression_weight"),
    (["loss.relational_tau=0"], "loss.relational_tau"),
    (["loss.reverse_weight=-1"], "loss.reverse_weight"),
    (["loss.reverse_weight=1", "loss.self_weight=0"], "loss.reverse_weight"),
    (["loss.segment_weight=1", "student.arch=r3d_18"], "loss.segment_weight"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, override, check_paths=False)
    assert e.value.key == key


def test_unknown_key_in_yaml(tmp_path):
    p = write(tmp_path, {"optim": {"learning_rate": 0.1}})
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(p, check_paths=False)


def test_missing_paths(tmp_path):
    with pytest.raises(ConfigError, match="data.root"):
        load_config(None, [f"data.root={tmp_path / 'nope'}"])
    with pytest.raises(ConfigError, match="data.train_list"):
        load_config(None, [f"data.root={tmp_path}", f"data.train_list={tmp_path / 'x.txt'}"])
    with pytest.raises(ConfigError, match="teachers.0.weights"):
        load_config(None, [f"data.root={tmp_path}", "teachers.0.source=torchscript",
                           f"teachers.0.weights={tmp_path / 't.pt'}"])


def test_cli_config_error_is_one_line_exit_2(tmp_path, capsys):
    rc = main(["pretrain", "optim.lr=abc", f"data.root={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "optim.lr" in err and "Traceback" not in err


def test_every_field_documented():
    docs = field_docs(Config)
    assert "optim.lr" in docs and "teachers.N.weight" in docs
    assert all(docs.values()), [k for k, v in docs.items() if not v]
