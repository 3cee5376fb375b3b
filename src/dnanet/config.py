"""A TOML configuration file per role: ``dnanet node run --config node.toml``.

Each key is a long option of the role's commands without its dashes (``data-dir =
"/var/lib/dnanet/node"``; ``data_dir`` reads the same); a flag on the command line overrides
the file. The file is flat, ``key = value``, and read the way the flag's own text is: a bad
value is refused naming the file, the key and what is wrong, and so is a key that no command
of the role takes. One file serves all of a role's commands (``node run``, ``node claim``,
``node status``, ...): each takes the keys it has and leaves the others to its siblings.
Relative paths in the file are read from the file's directory. No secret belongs in it:
passwords and API keys come from the environment or a file of mode 0600 (see
``dnanet.keyfiles``).

`config_template` writes a commented file of a role's options (``dnanet node config init``).
"""

from __future__ import annotations

import argparse
import json
import textwrap
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnanet.errors import ConfigError

MAX_CONFIG_BYTES = 256 * 1024
SKIPPED = frozenset({"help", "config", "version"})
"""Options never read from a file."""
PATH_KEYS = frozenset({"data-dir", "deployment", "keystore", "gateway-key-file"})
"""Keys naming files: relative ones are read from the configuration file's directory."""
NOT_CONFIGURED = frozenset({"config", "serve"})
"""Subcommands whose options are not the role's: ``config init`` writes the file, and
``validator serve`` is started by ``validator run`` with its options."""
EXAMPLES: dict[str, Any] = {
    "rpc": "http://127.0.0.1:8545",
    "deployment": "/etc/dnanet/deployment.json",
    "validator": "http://127.0.0.1:8700",
    "public-url": "https://node.example.org:8701",
    "stake": 100,
    "backend": ["minilm"],
    "upstream": ["http://127.0.0.1:8000/v1"],
    "gateway-key-file": "/etc/dnanet/gateway-keys",
    "address": "0x0000000000000000000000000000000000000000",
    "node": "http://127.0.0.1:8701",
    "epochs": 3,
    "recent": 20,
    "offline-at-block": 0,
    "compute-threads": 1,
    "workers": 0,
}
"""Values a template shows for keys without a default."""


@dataclass
class AppliedConfig:
    """What a file set: appended options are filled in after parsing, so that a flag given
    on the command line replaces the file's list instead of adding to it."""

    path: Path
    appended: dict[str, list[Any]] = field(default_factory=dict)

    def finish(self, args: argparse.Namespace) -> None:
        for dest, values in self.appended.items():
            if getattr(args, dest, None) is None:
                setattr(args, dest, values)


def subparsers_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands of ``parser`` by name ({} when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def find_command(parser: argparse.ArgumentParser,
                 argv: Sequence[str]) -> tuple[list[str], list[argparse.ArgumentParser]]:
    """The subcommand path ``argv`` names (``["node", "run"]``) and the parsers along it."""
    path: list[str] = []
    chain = [parser]
    for token in argv:
        choices = subparsers_of(chain[-1])
        if not choices:
            break
        if token in choices:
            path.append(token)
            chain.append(choices[token])
    return path, chain


def config_option(argv: Sequence[str]) -> str | None:
    """The value of ``--config`` in ``argv`` (``--config F`` or ``--config=F``), if any."""
    for i, token in enumerate(argv):
        if token == "--":
            break
        if token == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--config="):
            return token.split("=", 1)[1]
    return None


def option_key(action: argparse.Action) -> str | None:
    """The key of an option in a file: its long name without dashes; None if not one."""
    longs = [o for o in action.option_strings if o.startswith("--")]
    if not longs or action.help == argparse.SUPPRESS:
        return None
    key = longs[0][2:]
    return None if key in SKIPPED else key


def role_options(role: argparse.ArgumentParser) -> dict[str, list[argparse.Action]]:
    """Every key that some command of ``role`` takes, with the actions of each command."""
    out: dict[str, list[argparse.Action]] = {}

    def walk(parser: argparse.ArgumentParser) -> None:
        for name, sub in subparsers_of(parser).items():
            if name not in NOT_CONFIGURED:
                walk(sub)
        for action in parser._actions:
            key = option_key(action)
            if key is not None:
                out.setdefault(key, []).append(action)

    walk(role)
    return out


def read_config(path: Path) -> dict[str, Any]:
    """The flat table of a TOML file, keys with ``_`` read as ``-``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: "
                          f"{exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {len(raw)} bytes; a configuration file holds at most "
                          f"{MAX_CONFIG_BYTES}")
    try:
        table = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a TOML file: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            raise ConfigError(f"{path}: [{key}] is a table; the file is flat (key = value)")
        out[key.replace("_", "-")] = value
    return out


def _text(value: Any, key: str, path: Path) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{path}: {key}: expected a string or a number, got "
                          f"{json.dumps(value, default=str)}")
    return str(value)


def _convert_one(action: argparse.Action, value: Any, key: str, path: Path) -> Any:
    text = _text(value, key, path)
    if key in PATH_KEYS and not Path(text).is_absolute():
        text = str(path.parent / text)
    try:
        converted = action.type(text) if callable(action.type) else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: {key}: {exc}") from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"{path}: {key}: {text!r} is not one of {choices}")
    return converted


def convert_value(action: argparse.Action, value: Any, key: str, path: Path) -> Any:
    """``value`` from the file as the option's own type makes it (ConfigError if it cannot)."""
    if action.nargs == 0:  # a flag: --no-gateway
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: {key}: expected true or false, got "
                              f"{json.dumps(value, default=str)}")
        return action.const if value else action.default
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [_convert_one(action, item, key, path) for item in items]
    return _convert_one(action, value, key, path)


def apply_config(path: Path, role: argparse.ArgumentParser,
                 command: argparse.ArgumentParser, command_name: str) -> AppliedConfig:
    """Make the keys of the file at ``path`` the defaults of ``command`` (a subcommand of
    ``role``), so that flags override them. A key no command of the role takes is an error."""
    table = read_config(path)
    known = role_options(role)
    applied = AppliedConfig(path)
    own = {option_key(a): a for a in command._actions if option_key(a) is not None}
    for key, value in table.items():
        if key not in known:
            names = ", ".join(sorted(known))
            raise ConfigError(f"{path}: unknown key {key!r} (the keys of `dnanet "
                              f"{command_name.split()[0]}` commands: {names})")
        action = own.get(key)
        if action is None:
            continue  # a sibling command's key (node run's port, read by node claim)
        converted = convert_value(action, value, key, path)
        action.required = False
        if isinstance(action, argparse._AppendAction):
            action.default = None
            applied.appended[action.dest] = converted
        else:
            action.default = converted
        for group in command._mutually_exclusive_groups:
            if action in group._group_actions:
                group.required = False
    return applied


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def _example(action: argparse.Action, key: str, role: str) -> Any:
    if key == "data-dir":
        return f"/var/lib/dnanet/{role}"
    if key == "keystore":
        return f"/etc/dnanet/{role}/keystore.json"
    return EXAMPLES.get(key, "")


def config_template(role_name: str, role: argparse.ArgumentParser,
                    main_command: str = "run") -> str:
    """A commented TOML file with every key of ``role``'s commands: the options of
    ``main_command`` first, then those only its siblings read. Required keys are set to an
    example to edit; the others are commented out at their default."""
    options = role_options(role)
    main = subparsers_of(role).get(main_command)
    main_keys = [k for k in (option_key(a) for a in (main._actions if main else []))
                 if k is not None]
    rest = sorted(k for k in options if k not in main_keys)
    header = (f"dnanet {role_name}: configuration (TOML). Use it with `dnanet {role_name} "
              f"{main_command} --config FILE`; a flag on the command line overrides a key "
              "here. Relative paths are read from this file's directory. No secrets here: the "
              "keystore password comes from $DNANET_KEYSTORE_PASSWORD or the file named by "
              "$DNANET_KEYSTORE_PASSWORD_FILE.")
    lines = [*textwrap.wrap(header, 92, initial_indent="# ", subsequent_indent="# "), ""]
    for section, keys in ((f"{role_name} {main_command}", main_keys),
                          (f"other {role_name} commands", rest)):
        if not keys:
            continue
        lines.append(f"# ---- read by {section}")
        for key in keys:
            action = options[key][0]
            help_text = " ".join((action.help or "").split()).replace("%%", "%")
            lines.extend(textwrap.wrap(f"{key}: {help_text}", 92, initial_indent="# ",
                                       subsequent_indent="#   ", break_on_hyphens=False))
            required = main is not None and any(a.required for a in main._actions
                                                if option_key(a) == key)
            if action.nargs == 0:
                lines.append(f"# {key} = false")
            elif required:
                lines.append(f"{key} = {_toml(_example(action, key, role_name))}")
            elif action.default is not None:
                lines.append(f"# {key} = {_toml(action.default)}")
            else:
                lines.append(f"# {key} = {_toml(_example(action, key, role_name))}")
            lines.append("")
    return "\n".join(lines)


__all__ = [
    "AppliedConfig",
    "apply_config",
    "config_option",
    "config_template",
    "convert_value",
    "find_command",
    "read_config",
    "role_options",
]
