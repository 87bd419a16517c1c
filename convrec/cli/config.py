"""`convrec --config FILE COMMAND ...`: every command's flags read from one TOML or YAML file.

The file has a table per command, named as on the command line (`[sft]`, `[rl]`, `[data.synth]`,
`[baseline.cooc]`), with keys named like the flags (`max-steps` or `max_steps`). Top-level keys
that are not tables are shared: each command that has a flag of that name takes it (`data = "..."`
once for all stages). Flags given on the command line win over the file. A key no command knows is
an error, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import sys
from pathlib import Path

from convrec.errors import ConvrecError


def read(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConvrecError(f"{path}: no such config file")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover
                import tomli as tomllib
            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConvrecError(f"{path}: a config file must end in .toml, .yaml or .yml")
    except ConvrecError:
        raise
    except Exception as e:  # tomllib.TOMLDecodeError, yaml.YAMLError: both name the line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvrecError(f"{path}: not valid {path.suffix[1:].upper()} ({first})") from None
    if not isinstance(data, dict):
        raise ConvrecError(f"{path}: the top level must be a table of settings")
    return data


def _is_group(cmd) -> bool:
    # duck-typed: typer vendors its own click, so isinstance checks against `click` would miss
    return hasattr(cmd, "commands")


def option_names(cmd) -> dict[str, str]:
    """Accepted spellings of each option → its parameter name (flag without dashes, either separator)."""
    out = {}
    for p in cmd.params:
        if getattr(p, "param_type_name", "") == "option" and p.name:
            out[p.name] = out[p.name.replace("_", "-")] = p.name
            for opt in p.opts:
                if opt.startswith("--"):
                    out[opt[2:]] = out[opt[2:].replace("-", "_")] = p.name
    return out


def default_map(group, settings: dict, path: Path, prefix: str = "") -> dict:
    """click's default_map for ``group`` from the file's settings (validated)."""
    shared = {k: v for k, v in settings.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in settings.items() if isinstance(v, dict)}
    for name in tables:
        if name not in group.commands:
            raise ConvrecError(f"{path}: [{prefix}{name}] is not a convrec command")
    out: dict = {}
    for name, cmd in group.commands.items():
        table = tables.get(name, {})
        if _is_group(cmd):
            sub = default_map(cmd, {**shared, **table}, path, f"{prefix}{name}.")
            if sub:
                out[name] = sub
            continue
        names = option_names(cmd)
        entry = {names[k]: v for k, v in shared.items() if k in names}
        for k, v in table.items():
            if k not in names:
                command = f"convrec {prefix.replace('.', ' ')}{name}"
                raise ConvrecError(f"{path}: [{prefix}{name}] has no setting '{k}' (see '{command} --help')")
            entry[names[k]] = v
        if entry:
            out[name] = entry
    return out


def load(group, path: Path) -> dict:
    """Read a pipeline file and validate it against ``group``: click's default_map for it."""
    settings = read(path)
    shared_keys_used(group, settings, path)
    return default_map(group, settings, path)


def shared_keys_used(group, settings: dict, path: Path) -> None:
    """A shared key that no command has is a typo: say so."""
    known: set[str] = set()

    def walk(g) -> None:
        for cmd in g.commands.values():
            if _is_group(cmd):
                walk(cmd)
            else:
                known.update(option_names(cmd))

    walk(group)
    for k, v in settings.items():
        if not isinstance(v, dict) and k not in known:
            raise ConvrecError(f"{path}: no command has a setting '{k}'")
