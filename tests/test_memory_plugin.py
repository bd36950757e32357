"""The memory-type contract: a type registered from outside the package (a plug-in module named in $HMEM_PLUGINS)
is validated by the config, listed by `hmem list`, sized by sweeps, trained and evaluated like a shipped one, owns
its options section (memory.<config_key>.<key> from YAML and key=value), and the capabilities (`routed`) replace
attribute tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from hmem_lit.config import ConfigError, load_config
from hmem_lit.memory import MEMORY
from hmem_lit.memory.base import MemoryType, is_routed, memory_class, memory_types, routed_types
from tests.conftest import ROOT

DEBUG = str(ROOT / "experiments" / "000_debug.yaml")

PLUGIN = textwrap.dedent('''
    """A small real memory type: FFN memory with a ReLU^p activation (p = 2: squared ReLU, Primer), one file, with
    its own options section memory.relu.*."""
    from dataclasses import dataclass

    import torch.nn.functional as F
    from hmem_lit.errors import check
    from hmem_lit.memory import MEMORY
    from hmem_lit.memory.ffn import FFNHooks, FFNMemory

    @dataclass
    class ReLUOptions:
        power: float = 2.0  # the activation is relu(x) ** power

        def __post_init__(self):
            check(self.power > 0, "memory.relu.power", f"must be > 0, got {self.power}")

    @MEMORY.register("ffn_relu2")
    class ReLU2FFNMemory(FFNMemory):
        config_key, options = "relu", ReLUOptions

        def __init__(self, mcfg, acfg, branching):
            super().__init__(mcfg, acfg, branching)
            self.power = mcfg.relu.power

        def fetch(self, paths, generic=None):
            return FFNHooks(self.gather(paths, generic), self.slot, self.d, lambda x: F.relu(x).pow(self.power))
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "my_hmem_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mod = importlib.import_module("my_hmem_plugin")
    yield mod, tmp_path
    MEMORY._items.pop("ffn_relu2", None)
    sys.modules.pop("my_hmem_plugin", None)


def test_shipped_capabilities():
    assert set(routed_types()) == {"ffn", "lora", "kv"} and "pkm" in memory_types()
    assert not is_routed("pkm") and not is_routed("none") and is_routed("ffn")
    assert all(issubclass(memory_class(n), MemoryType) for n in memory_types())
    assert memory_class("pkm").config_key == "pkm"


def test_shipped_options_sections_are_the_types_own():
    """A type's `config_key` names its section of MemoryConfig and `options` is the dataclass that declares it; the
    one other section is the bank's storage (memory.storage, read by hmem_lit/storage/, not by a type)."""
    from dataclasses import fields

    from hmem_lit.config import MemoryConfig, StorageConfig

    sections = {f.name: f.default_factory for f in fields(MemoryConfig) if isinstance(f.default_factory, type)}
    assert sections.pop("storage") is StorageConfig
    owned = {memory_class(n).config_key: memory_class(n).options for n in memory_types() if memory_class(n).options}
    assert owned == sections and set(owned) == {"lora", "pkm"}


def test_unknown_type_lists_the_registry():
    with pytest.raises(ConfigError, match="memory.type: got 'ffn2'; allowed: none, ffn, kv, lora, pkm"):
        load_config(DEBUG, ["memory.type=ffn2"])


def test_plugin_type_validates_sizes_trains_and_differs(plugin, tmp_path):
    from hmem_lit import sweeps
    from hmem_lit.model import MemoryLM

    cfg = load_config(
        DEBUG, ["memory.type=ffn_relu2", "memory.levels=[4]", "retriever.depth=1", "anchor.vocab_size=300"]
    )
    assert cfg.memory.type == "ffn_relu2" and is_routed("ffn_relu2")
    with pytest.raises(ConfigError, match="ffn_relu2 needs a non-zero size"):  # the base contract's check
        load_config(DEBUG, ["memory.type=ffn_relu2", "memory.levels=[0]"])
    # sized by the sweep translator like a shipped bank type (c0 = 3 * layers * d_model)
    spec = sweeps.load_sweep(
        ROOT / "sweeps" / "memory_type.yaml", ["space.memory.type=[ffn_relu2]", "space.train.seed=[0]"]
    )
    _, info = sweeps.translate(spec, spec.grid()[0])
    assert info["realised_fetched"] == 36864 and info["c0"] == 3 * 2 * 64
    # a real forward: same weights as an FFN memory, a different activation, a different output
    torch.manual_seed(0)
    m = MemoryLM(cfg)
    with torch.no_grad():
        for _, _, t in m.memory.bank.tables():
            t.normal_(0, 0.5)
    ref = MemoryLM(
        load_config(DEBUG, ["memory.type=ffn", "memory.levels=[4]", "retriever.depth=1", "anchor.vocab_size=300"])
    )
    ref.load_state_dict(m.state_dict())
    x, paths = torch.randint(0, 300, (2, 16)), torch.zeros(2, 1, dtype=torch.long)
    a, b = m(x, paths=paths), ref(x, paths=paths)
    assert a.shape == b.shape and not torch.allclose(a, b)


def test_plugin_options_section(plugin, tmp_path):
    """memory.relu.power: set from key=value and YAML, validated by the plug-in's dataclass, a misspelled key named,
    kept through to_dict / from_dict, and it changes the model's output."""
    from hmem_lit.config import from_dict, to_dict
    from hmem_lit.model import MemoryLM

    base = ["memory.type=ffn_relu2", "memory.levels=[4]", "retriever.depth=1", "anchor.vocab_size=300"]
    cfg = load_config(DEBUG, [*base, "memory.relu.power=3"])
    assert cfg.memory.relu.power == 3.0 and load_config(DEBUG, base).memory.relu.power == 2.0
    assert from_dict(to_dict(cfg)) == cfg and to_dict(cfg)["memory"]["relu"] == {"power": 3.0}
    y = tmp_path / "relu.yaml"
    y.write_text(
        f"base: {DEBUG}\nmemory: {{type: ffn_relu2, levels: [4], relu: {{power: 1.5}}}}\nretriever: {{depth: 1}}\n"
    )
    assert load_config(y).memory.relu.power == 1.5
    with pytest.raises(ConfigError, match="memory.relu.power: must be > 0"):
        load_config(DEBUG, [*base, "memory.relu.power=0"])
    with pytest.raises(ConfigError, match="memory.relu.powr: unknown config key; did you mean memory.relu.power"):
        load_config(DEBUG, [*base, "memory.relu.powr=3"])
    torch.manual_seed(0)
    m = MemoryLM(cfg)
    with torch.no_grad():
        for _, _, t in m.memory.bank.tables():
            t.normal_(0, 0.5)
    sq = MemoryLM(load_config(DEBUG, base))
    sq.load_state_dict(m.state_dict())
    x, paths = torch.randint(0, 300, (2, 16)), torch.zeros(2, 1, dtype=torch.long)
    assert not torch.allclose(m(x, paths=paths), sq(x, paths=paths))


@pytest.mark.slow  # two subprocesses (list, train); the in-process test above covers the contract
def test_plugin_from_env_in_a_fresh_process(plugin, tmp_path):
    """`HMEM_PLUGINS=module hmem ...`: the list shows it; training a toy run with it completes."""
    _, path = plugin
    env = {**os.environ, "HMEM_PLUGINS": "my_hmem_plugin", "PYTHONPATH": f"{path}{os.pathsep}{ROOT}"}
    cli = [sys.executable, "-m", "hmem_lit.cli"]
    out = subprocess.run([*cli, "list"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ffn_relu2 (routed)" in out.stdout, out.stderr[-1500:]
    run = subprocess.run(
        [
            *cli,
            "train",
            DEBUG,
            "memory.type=ffn_relu2",
            "memory.levels=[4]",
            "memory.relu.power=3",
            "retriever.depth=1",
            "train.max_tokens=2048",
            "train.progress=false",
            "train.threads=1",
            f"out_dir={tmp_path / 'runs'}",
            "name=plug",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    import json

    final = json.loads((tmp_path / "runs" / "000_debug" / "plug" / "final.json").read_text())
    assert final["config"]["memory"]["type"] == "ffn_relu2" and final["params"]["fetched"] == 4 * 3 * 2 * 64
    assert final["config"]["memory"]["relu"] == {"power": 3.0}
    bad = subprocess.run(
        [*cli, "list"], env={**env, "HMEM_PLUGINS": "no_such_plugin_mod"}, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and "no_such_plugin_mod" in bad.stderr and "Traceback" not in bad.stderr
