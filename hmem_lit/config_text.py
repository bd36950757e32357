"""Reading a config from text, before the dataclasses exist: experiment YAML files (with `base:` chains) and
`key=value` overrides, each turned into an OmegaConf tree, and the checks that must see the raw values (a scalar
where a section goes, a number out of range, a YAML-retyped string). `hmem_lit.config.load_config` composes them;
nothing here knows the schema's classes beyond what it is handed.
"""

from __future__ import annotations

import difflib
import functools
import math
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hmem_lit.errors import ConfigError
from hmem_lit.errors import check as _check


def valid_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config dataclass, instance or class (sections and their fields). A class is read
    without being built, so naming a typo never runs the sections' validation (which imports the registries)."""
    out = []
    for f in fields(node):
        key = f"{prefix}{f.name}"
        out.append(key)
        if isinstance(node, type):
            val = f.default_factory if f.default_factory is not MISSING else None
        else:
            val = getattr(node, f.name)
        if is_dataclass(val):
            out.extend(valid_keys(val, key + "."))
    return out


def friendly(err: OmegaConfBaseException, valid: list[str]) -> ConfigError:
    """Turn OmegaConf's multi-line error into one line naming the key and the nearest of the `valid` keys."""
    full_key = getattr(err, "full_key", None) or ""
    msg = str(err).splitlines()[0]
    if "not in" in msg or "Key '" in msg and "struct" in msg.lower() or type(err).__name__ == "ConfigKeyError":
        near = difflib.get_close_matches(full_key, valid, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        return ConfigError(f"{full_key}: unknown config key{hint}")
    return ConfigError(f"{full_key or 'config'}: {msg}")


# Every YAML file the suite reads (experiments, sweeps, figure specs, run configs, the task YAMLs of an include
# path) goes through `load_yaml`: the safe loader, plus a bound on what anchors and aliases expand to, so a
# "billion laughs" file is one line instead of minutes and gigabytes (PyYAML shares aliased objects, but every
# consumer that copies or walks the tree pays the expanded size).
YAML_MAX_NODES = 200_000  # nodes after expanding every alias


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    import yaml

    got = memo.get(id(node))
    if got is not None:
        return got
    memo[id(node)] = 1  # a node that refers to itself counts once
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(c, memo) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = size
    return size


def load_yaml(text: str, where: str, tags: list[str] | None = None) -> Any:
    """YAML text -> Python objects with the safe loader, refusing (one ConfigError naming `where`) a document whose
    aliases expand past YAML_MAX_NODES nodes or that is not valid YAML. `tags`, if given, receives
    "<tag> at line <n>" for every application-specific tag (e.g. lm-eval's `!function`), which the safe loader would
    refuse: the caller decides whether to trust them, and the document itself is then not constructed (None)."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    found: list[str] = []

    def _tagged(loader: Any, suffix: str, node: Any) -> None:
        found.append(f"{node.tag} at line {node.start_mark.line + 1}")

    if tags is not None:
        _Loader.add_multi_constructor("!", _tagged)
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is not None and _expanded_size(node, {}) > YAML_MAX_NODES:
                raise ConfigError(
                    f"{where}: its anchors and aliases expand to more than {YAML_MAX_NODES:,} nodes (a YAML bomb?); "
                    "write the values out or use fewer aliases"
                )
            value = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to read; flatten it") from None
    if tags is not None:
        tags.extend(found)
    return value


def read_yaml(path: str | Path, chain: tuple[Path, ...] = ()) -> DictConfig:
    """An experiment file, merged onto its `base:` chain (each path relative to the file naming it)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(
            f"{p}: a directory, not an experiment file; give a YAML file (a run's own is {p / 'config.yaml'})"
        )
    if not p.is_file():
        raise ConfigError(f"{p}: experiment file not found" + (f" (the base: of {chain[-1]})" if chain else ""))
    if p.resolve() in chain:
        cycle = " -> ".join(c.name for c in (*chain, p.resolve()))
        raise ConfigError(f"{chain[-1]}: base: makes a cycle ({cycle}); remove one of these base: lines")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read it ({e})") from None
    load_yaml(text, str(p))  # the bounded reader first: a YAML bomb is one line, not minutes of OmegaConf
    try:
        cfg = OmegaConf.load(p)
    except Exception as e:  # yaml.YAMLError and friends: report line
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{p}: the top level must be a mapping of config sections")
    if len(cfg) == 0:  # an empty file (or only comments): almost surely a mistake, not "all defaults"
        raise ConfigError(f"{p}: the experiment file has no settings; give at least one (see experiments/*.yaml)")
    base = cfg.pop("base", None)  # an experiment may extend another: `base: 001_other.yaml`
    if base:
        try:
            # merging onto a DictConfig gives a DictConfig
            cfg = cast(DictConfig, OmegaConf.merge(read_yaml(p.parent / base, (*chain, p.resolve())), cfg))
        except TypeError as e:  # a list where the base has a mapping, or the reverse
            raise ConfigError(f"{p}: cannot extend its base {base} ({e}); a section must stay a mapping") from None
    return cfg


@functools.cache
def str_keys(cls: Any, prefix: str = "") -> frozenset[str]:
    """Dotted keys of the fields of config dataclass `cls` declared `str` (not Any, not optional)."""
    out: set[str] = set()
    for f in fields(cls):
        sub = f.default_factory if f.default_factory is not MISSING else None
        if sub is not None and is_dataclass(sub):
            out |= str_keys(sub, f"{prefix}{f.name}.")
        elif f.type in ("str", str):
            out.add(prefix + f.name)
    return frozenset(out)


def parse_overrides(overrides: list[str] | tuple[str, ...], text_keys: frozenset[str] = frozenset()) -> DictConfig:
    """`key=value` strings -> one DictConfig; a value YAML cannot parse is an error naming its key. A key in
    `text_keys` (fields declared `str`) keeps the literal text where YAML reads a bool, number or null
    (`name=off` is the name "off", not false; `memory.storage.dtype=` is the empty string, which the field's own check
    then names); a list or mapping stays an error."""
    out = OmegaConf.create({})
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"{ov}: overrides are key=value (e.g. train.max_tokens=100000)")
        key, value = ov.split("=", 1)
        try:
            parsed = OmegaConf.from_dotlist([ov])
            got: Any = OmegaConf.to_container(parsed, resolve=False)  # unresolved: `${...}` is resolved later
            for part in key.split("."):
                got = got.get(part) if isinstance(got, dict) else None
            if key in text_keys and (got is None or isinstance(got, (bool, int, float))):  # a scalar YAML re-typed
                parsed = OmegaConf.create({})
                OmegaConf.update(parsed, key, value)
            out = cast(DictConfig, OmegaConf.merge(out, parsed))
        except OmegaConfBaseException:
            raise
        except Exception as e:  # yaml's ScannerError / ParserError: a malformed value such as `[1,`
            raise ConfigError(
                f"{key}: cannot parse {value!r} ({str(e).splitlines()[0]}); write a list as "
                "[1, 2] and quote a string that holds brackets or colons"
            ) from None
    return out


_INT64 = 2**63


def check_shapes(explicit: Any, schema: Any, prefix: str = "") -> None:
    """A scalar where a section goes (`train=5`) names the section; huge integers and non-finite floats name
    their key (each would otherwise fail deep inside torch, or train to NaN). schema: the defaults as a container."""
    if isinstance(explicit, dict):
        for k, v in explicit.items():
            key = f"{prefix}{k}"
            sub = schema.get(k) if isinstance(schema, dict) else None
            if isinstance(sub, dict) and not isinstance(v, dict):
                raise ConfigError(f"{key}: is a config section, got {v!r}; set its keys instead ({key}.<key>=value)")
            if isinstance(sub, list) and not isinstance(v, list):
                raise ConfigError(f"{key}: must be a list such as [1, 2], got {v!r}")
            if isinstance(schema, dict) and k in schema and not isinstance(sub, dict) and isinstance(v, dict):
                raise ConfigError(f"{key}: must be a single value, got a mapping {v!r}")
            if isinstance(sub, bool) and not isinstance(v, bool):  # OmegaConf would read 2 or "2" as true
                raise ConfigError(f"{key}: must be true or false, got {v!r}")
            check_shapes(v, sub, key + ".")
    elif isinstance(explicit, list):
        for i, v in enumerate(explicit):
            check_shapes(v, None, f"{prefix[:-1]}[{i}].")
    elif isinstance(explicit, bool):
        return
    elif isinstance(explicit, int):
        _check(abs(explicit) < _INT64, prefix[:-1], f"{explicit} is out of range (at most {_INT64 - 1})")
    elif isinstance(explicit, float):
        _check(math.isfinite(explicit), prefix[:-1], f"must be a finite number, got {explicit}")


_noticed: set[str] = set()  # renamed keys already announced in this process (one notice each)


def rename(tree: Any, renamed: dict[str, str]) -> Any:
    """A plain config dict (or DictConfig) with every old dotted key of `renamed` (old -> new) moved to its new key,
    each with a one-line notice naming the new key; the input is not changed. Setting both the old and the new key
    is a ConfigError."""
    import copy
    import logging

    was_node = isinstance(tree, DictConfig)
    d = OmegaConf.to_container(tree, resolve=False) if was_node else copy.deepcopy(tree)
    if not isinstance(d, dict):
        return tree
    for old, new in renamed.items():
        *path, leaf = old.split(".")
        node: Any = d
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node.pop(leaf)
        *npath, nleaf = new.split(".")
        dest: Any = d
        for p in npath:
            dest = dest.setdefault(p, {})
            _check(isinstance(dest, dict), new, f"is a config section (the new name of {old})")
        _check(nleaf not in dest, old, f"renamed to {new}, and both are set; keep {new}")
        dest[nleaf] = value
        if old not in _noticed:
            _noticed.add(old)
            logging.getLogger("hmem_lit").warning("%s is now %s (the old key still works)", old, new)
    return OmegaConf.create(d) if was_node else d
