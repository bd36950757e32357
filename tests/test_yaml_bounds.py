"""Every YAML the suite reads has the same bounds (reliability round 3, class 7): a "billion laughs" document is
one line and exit 2 within a second whether it is an experiment, a sweep, a figure spec or an include-path task;
an include path's `!function` tag (code run from a data file) needs --trust-include-path."""

from __future__ import annotations

import time

import pytest

from hmem_lit.config import ConfigError
from hmem_lit.config_text import YAML_MAX_NODES, load_yaml

from .test_bad_input import assert_one_line, run_cli


def bomb(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_the_bound_counts_expanded_nodes_not_text():
    assert load_yaml("a: &x [1, 2]\nb: *x\n", "ok") == {"a": [1, 2], "b": [1, 2]}  # aliases themselves are fine
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="expand to more than"):
        load_yaml(bomb(), "bomb.yaml")
    assert time.perf_counter() - t0 < 5.0  # refused while reading, not after expanding 387M nodes
    assert 9**6 > YAML_MAX_NODES > 9**4  # six levels are refused, four are not
    load_yaml(bomb(4), "four.yaml")


def _in_profile(text: str) -> str:
    """A valid sweep whose gpu profile's overrides hold the bomb (the round-3 probe's case: the keys are legal)."""
    body = "\n".join("      " + line for line in text.splitlines())
    return (
        "name: b\nbase: 000_debug\nspace: {train.seed: [0]}\nprofiles:\n  gpu:\n    overrides:\n"
        f"      data.toy_docs: 10\n{body}\n"
    )


@pytest.mark.parametrize("where", ["experiment", "sweep", "sweep_profile", "spec"])
def test_a_yaml_bomb_is_one_line_everywhere(tmp_path, capsys, where):
    f = tmp_path / f"{where}.yaml"
    text = bomb() + ("name: b\nbase: 000_debug\nspace: {train.seed: [0]}\n" if where == "sweep" else "")
    f.write_text(_in_profile(bomb()) if where == "sweep_profile" else text)
    argv = {
        "experiment": ["train", str(f)],
        "sweep": ["sweep", str(f)],
        "sweep_profile": ["sweep", str(f), "profile=gpu"],
        "spec": ["report", str(tmp_path), "--spec", str(f), "--out", str(tmp_path / "rep")],
    }[where]
    rc, err = run_cli(argv, capsys)
    assert_one_line(rc, err, str(f))


def test_function_tags_in_an_include_path_need_trust(tmp_path):
    from hmem_lit.evaluation.runner import user_tasks

    d = tmp_path / "tasks"
    d.mkdir()
    (d / "t.yaml").write_text(
        "task: mine\ncustom_dataset: !function mymod.load\noutput_type: generate_until\n"
        "doc_to_text: prompt\ndoc_to_target: answer\n"
    )
    with pytest.raises(ConfigError, match="--trust-include-path") as e:
        user_tasks([str(d)])
    assert "t.yaml" in str(e.value) and "line 2" in str(e.value)
    assert "mine" in user_tasks([str(d)], trust=True)  # trusted: indexed as lm-eval does (nothing imported yet)
