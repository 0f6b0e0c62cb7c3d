"""The one way settings are read: environment variables and CLI flags, parsed into frozen dataclasses.

What this is for: every config class (``EngineConfig``, ``DeploymentSpec``, ``ClusterConfig``, the app's
``AppConfig``) declares its settings as dataclass fields made by :func:`setting` (environment variable, flag,
help, how the text is read, the rules on the value) and inherits :class:`Settings`, which reads them all the
same way: ``from_env(environ, **overrides)``, ``add_arguments(parser)`` (one flag per setting, its help saying
``[env: NAME] [default: ...]``), ``from_args(args, environ, **overrides)`` (environment first, flags on top).
The parsers are here once, each raising :class:`~lora_engine.errors.ConfigError` naming the variable (or flag)
and the text:

- booleans: ``1/true/yes/on`` and ``0/false/no/off``, any case; anything else is an error, never "false";
- byte sizes: ``4GiB``, ``512MiB``, ``2GB``, ``1e9``, plain integers;
- durations in seconds: plain numbers, or ``30s``, ``5m``, ``1h``;
- comma-separated lists, integers, finite floats, and choices (any case; the declared spelling is returned).

An empty variable counts as unset (shells and container specs often export ``NAME=``).

What it is not for: variables other libraries define and read themselves (huggingface_hub's ``HF_*``: read
them from ``huggingface_hub.constants``, as it parsed them), nor rules between several settings (each class's
``__post_init__`` keeps those). Pure: imports no torch.

Example:
    >>> @dataclass(frozen=True)
    ... class Knobs(Settings):
    ...     # Seconds between refreshes; an hour keeps the Hub's rate limits far away.
    ...     refresh_s: float = setting(3600.0, env="REFRESH_S", kind=Kind.SECONDS, help="refresh period")
    >>> Knobs.from_env({"REFRESH_S": "5m"}).refresh_s
    300.0
"""

from __future__ import annotations

import argparse
import enum
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from decimal import Decimal
from typing import Any, ClassVar

from .errors import ConfigError

__all__ = [
    "Kind",
    "Setting",
    "Settings",
    "parse_bool",
    "parse_bytes",
    "parse_choice",
    "parse_float",
    "parse_int",
    "parse_list",
    "parse_seconds",
    "setting",
]

#: The key of a setting's :class:`Setting` in its dataclass field's metadata.
METADATA_KEY = "lora_engine.setting"


class Kind(enum.Enum):
    """How a setting's text is read; each value is how error messages describe what was expected."""

    STR = "a string"
    BOOL = "a boolean (1/true/yes/on or 0/false/no/off)"
    INT = "an integer"
    FLOAT = "a finite number"
    BYTES = "a size in bytes (an integer, 1e9, 512MiB, 4GiB, 2GB)"
    SECONDS = "a duration in seconds (30, 30s, 5m, 1h)"
    LIST = "a comma-separated list"
    CHOICE = "one of the declared choices"


# -- the parsers ------------------------------------------------------------------------------------------------

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
# Binary units are what memory budgets are usually meant in; decimal ones are what disks and the Hub show.
_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SECOND_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}
_MAX_DIGITS = 30
_NUMBER_AND_UNIT = re.compile(r"([+-]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*([a-z]*)")


def _refuse(name: str, kind: Kind, raw: str) -> ConfigError:
    return ConfigError(f"{name} must be {kind.value} but is {raw!r}")


def parse_bool(raw: str, name: str) -> bool:
    """``1/true/yes/on`` -> True, ``0/false/no/off`` -> False (any case, surrounding spaces ignored).

    Raises:
        ConfigError: anything else, naming ``name`` and ``raw``.
    """
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _refuse(name, Kind.BOOL, raw)


def parse_int(raw: str, name: str) -> int:
    """A plain integer (``64``, ``-1``, ``1_000``).

    Raises:
        ConfigError: not an integer (``2.5`` and ``1e3`` included), naming ``name`` and ``raw``.
    """
    try:
        return int(raw.strip())
    except ValueError:
        raise _refuse(name, Kind.INT, raw) from None


def parse_float(raw: str, name: str) -> float:
    """A finite number (``2.5``, ``1e-3``, ``10``).

    Raises:
        ConfigError: not a number, or ``nan``/``inf``, naming ``name`` and ``raw``.
    """
    try:
        value = float(raw.strip())
    except ValueError:
        raise _refuse(name, Kind.FLOAT, raw) from None
    if not math.isfinite(value):
        raise _refuse(name, Kind.FLOAT, raw)
    return value


def _number_and_unit(raw: str, name: str, kind: Kind, units: Mapping[str, int]) -> Decimal:
    # Decimal, so that "1.1KB" is exactly 1100 bytes and huge integers stay exact (a float has 53 bits).
    match = _NUMBER_AND_UNIT.fullmatch(raw.strip().lower().replace("_", ""))
    if match is None or match[2] not in units:
        raise _refuse(name, kind, raw)
    number = Decimal(match[1])
    if number.adjusted() > _MAX_DIGITS:
        # int(Decimal("1e999999999")) would take minutes and gigabytes; no budget or duration is that large.
        raise ConfigError(f"{name} must be {kind.value} of at most {_MAX_DIGITS} digits but is {raw!r}")
    return number * units[match[2]]


def parse_bytes(raw: str, name: str) -> int:
    """A byte count: ``4GiB``, ``512MiB``, ``1.5GiB``, ``2GB``, ``1e9``, ``1073741824`` (units in any case).

    Raises:
        ConfigError: an unknown unit, not a number, or not a whole number of bytes, naming ``name`` and ``raw``.
    """
    value = _number_and_unit(raw, name, Kind.BYTES, _BYTE_UNITS)
    if value != value.to_integral_value():
        raise ConfigError(f"{name} must be a whole number of bytes but is {raw!r} ({value} bytes)")
    return int(value)


def parse_seconds(raw: str, name: str) -> float:
    """A duration in seconds: ``30``, ``2.5``, ``30s``, ``5m``, ``1h``.

    Raises:
        ConfigError: an unknown unit or not a finite number, naming ``name`` and ``raw``.
    """
    value = float(_number_and_unit(raw, name, Kind.SECONDS, _SECOND_UNITS))
    if not math.isfinite(value):
        raise _refuse(name, Kind.SECONDS, raw)
    return value


def parse_list(raw: str, name: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: comma-separated, parts stripped, empty parts dropped.

    ``name`` is unused (every text is a list) and kept so all parsers are called alike.
    """
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def parse_choice(raw: str, name: str, choices: Sequence[str]) -> str:
    """The one of ``choices`` that ``raw`` names, in any case; returned as declared (``info`` -> ``INFO``).

    Raises:
        ConfigError: none matches, naming ``name``, the choices and ``raw``.
    """
    text = raw.strip().lower()
    for choice in choices:
        if choice.lower() == text:
            return choice
    raise ConfigError(f"{name} must be one of {', '.join(choices)} but is {raw!r}")


_PARSERS: dict[Kind, Callable[[str, str], Any]] = {
    Kind.STR: lambda raw, name: raw.strip(),
    Kind.BOOL: parse_bool,
    Kind.INT: parse_int,
    Kind.FLOAT: parse_float,
    Kind.BYTES: parse_bytes,
    Kind.SECONDS: parse_seconds,
    Kind.LIST: parse_list,
}
_METAVARS = {
    Kind.STR: "TEXT",
    Kind.BOOL: "BOOL",
    Kind.INT: "N",
    Kind.FLOAT: "X",
    Kind.BYTES: "BYTES",
    Kind.SECONDS: "SECONDS",
    Kind.LIST: "A,B,...",
}


# -- declaring settings ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting as a config field declares it (through :func:`setting`); see that function's arguments.

    Args:
        field_name (`str`): the dataclass field it fills (filled in by :meth:`Settings.declared_settings`).
        flag (`str`): its CLI flag; ``--<field-name>`` unless declared.
    """

    env: str
    help: str
    kind: Kind = Kind.STR
    flag: str | None = None
    choices: tuple[str, ...] = ()
    none_word: str | None = None
    shown_default: str | None = None
    at_least: float | None = None
    at_most: float | None = None
    field_name: str = ""

    @property
    def dest(self) -> str:
        """The attribute ``argparse`` stores the flag's value under (unique, since flags are)."""
        return (self.flag or "").removeprefix("--").replace("-", "_")

    @property
    def label(self) -> str:
        """Every name a user may have set it by: ``max_queue (LORA_ENGINE_MAX_QUEUE, --max-queue)``."""
        return f"`{self.field_name}` ({self.env}, {self.flag})"

    def parse(self, raw: str, name: str) -> Any:
        """The value ``raw`` stands for (``name``: where it came from, for the message).

        Raises:
            ConfigError: ``raw`` does not parse as this setting's kind.
        """
        if self.none_word is not None and raw.strip().lower() == self.none_word:
            return None
        if self.kind is Kind.CHOICE:
            return parse_choice(raw, name, self.choices)
        return _PARSERS[self.kind](raw, name)

    def check(self, value: Any) -> None:
        """Check the declared rules (choices, bounds) on a value however it was given (env, flag, code, YAML).

        Raises:
            ConfigError: a rule is broken, naming the setting by :attr:`label` and the value.
        """
        if value is None:
            return
        if self.kind is Kind.CHOICE and value not in self.choices:
            raise ConfigError(f"{self.label} must be one of {', '.join(self.choices)} but is {value!r}")
        if self.at_least is not None and value < self.at_least:
            raise ConfigError(f"{self.label} must be at least {self.at_least:g} but is {value!r}")
        if self.at_most is not None and value > self.at_most:
            raise ConfigError(f"{self.label} must be at most {self.at_most:g} but is {value!r}")

    def show(self, default: Any) -> str:
        """The default as ``--help`` shows it."""
        if self.shown_default is not None:
            return self.shown_default
        if default is None:
            return "unset"
        if isinstance(default, bool):
            return "true" if default else "false"
        if self.kind is Kind.BYTES:
            return _show_bytes(default)
        if isinstance(default, float):
            return f"{default:g}"
        if isinstance(default, tuple):
            return ",".join(default) if default else "none"
        return str(default)


def _show_bytes(value: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value and value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


def setting(
    default: Any = MISSING,
    *,
    env: str,
    help: str,  # noqa: A002 (argparse's name for it)
    kind: Kind | None = None,
    flag: str | None = None,
    choices: Sequence[str] = (),
    none_word: str | None = None,
    shown_default: str | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
) -> Any:
    """A dataclass field that is also a setting, for classes that inherit :class:`Settings`.

    Args:
        default: the value when neither the variable nor the flag is given (immutable: tuples, not lists).
        env (`str`): the environment variable.
        help (`str`): one line for ``--help`` (the field's comment says why it exists).
        kind (`Kind`, *optional*): how text is read; ``Kind.CHOICE`` when ``choices`` are given, else ``Kind.STR``.
        flag (`str`, *optional*): the CLI flag; ``--<field-name>`` with dashes when omitted.
        choices (`Sequence[str]`, *optional*): the accepted values (matched in any case).
        none_word (`str`, *optional*): a word that means None (``"auto"``), when None is a value.
        shown_default (`str`, *optional*): how ``--help`` shows the default when the value says too little
            (``"auto"`` for None, ``"--max-queue"`` for a default taken from another setting).
        at_least (`float`, *optional*), at_most (`float`, *optional*): bounds, checked however the value is given.

    Raises:
        TypeError: the declaration itself is inconsistent (a bug in the config class, found at import).
    """
    if kind is None:
        kind = Kind.CHOICE if choices else Kind.STR
    if (kind is Kind.CHOICE) != bool(choices):
        raise TypeError(f"setting {env}: choices go with kind=Kind.CHOICE and only with it (kind is {kind})")
    if flag is not None and not flag.startswith("--"):
        raise TypeError(f"setting {env}: a flag starts with '--' but is {flag!r}")
    meta = Setting(
        env=env,
        help=help,
        kind=kind,
        flag=flag,
        choices=tuple(choices),
        none_word=none_word,
        shown_default=shown_default,
        at_least=at_least,
        at_most=at_most,
    )
    return field(default=default, metadata={METADATA_KEY: meta})


def _default_of(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


class Settings:
    """The machinery every config class inherits: declare fields with :func:`setting`, get the readers.

    A subclass is a frozen dataclass; fields made by :func:`setting` are its settings, other fields (a
    deployment's ``engine``, a cluster's ``deployments``) are set only from code or ``overrides``. Declared
    rules (choices, bounds) are checked in ``__post_init__`` however the object is built; a subclass with its
    own ``__post_init__`` calls ``super().__post_init__()``.
    """

    #: The title of this class's flags in ``--help``.
    settings_title: ClassVar[str] = "settings"

    def __post_init__(self) -> None:
        for s in self.declared_settings():
            s.check(getattr(self, s.field_name))

    @classmethod
    def declared_settings(cls) -> tuple[Setting, ...]:
        """This class's settings, in field order, with ``field_name`` and ``flag`` filled in."""
        out = []
        for f in fields(cls):
            meta = f.metadata.get(METADATA_KEY)
            if meta is not None:
                out.append(replace(meta, field_name=f.name, flag=meta.flag or "--" + f.name.replace("_", "-")))
        return tuple(out)

    @classmethod
    def setting_for(cls, field_name: str) -> Setting:
        """The declared setting of ``field_name``.

        Raises:
            KeyError: ``field_name`` is not a setting of this class.
        """
        for s in cls.declared_settings():
            if s.field_name == field_name:
                return s
        raise KeyError(field_name)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any):
        """Read every setting's variable once; ``overrides`` win.

        Args:
            environ (`Mapping[str, str]`, *optional*): defaults to ``os.environ``; empty values count as unset.
            overrides: field values (typed, not text) that win over the environment, e.g. from flags; None
                means "not given", so an override cannot set a field to None.

        Raises:
            ConfigError: a value does not parse (naming the variable) or breaks a rule.
        """
        return cls._read(environ, {k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def _read(cls, environ: Mapping[str, str] | None, given: Mapping[str, Any]):
        # ``given`` wins over the environment, None included (a flag may say "auto" for None).
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for s in cls.declared_settings():
            raw = environ.get(s.env)
            if raw is not None and raw.strip() != "":
                values[s.field_name] = s.parse(raw, s.env)
        values.update(given)
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one flag per setting to ``parser``, in a group, each documented with its variable and default.

        A flag's value is parsed as its variable's is; boolean flags take an optional value (``--prefetch``,
        ``--prefetch off``). A flag not given is absent from the parsed namespace (``argparse.SUPPRESS``), so
        that it leaves the environment's value alone, while one given may still say None (``auto``).
        """
        group = parser.add_argument_group(f"{cls.settings_title} (each flag overrides its environment variable)")
        defaults = {f.name: _default_of(f) for f in fields(cls)}
        for s in cls.declared_settings():
            text = f"[env: {s.env}] [default: {s.show(defaults[s.field_name])}] {s.help}"
            options: dict[str, Any] = {
                "dest": s.dest,
                "default": argparse.SUPPRESS,
                "type": _flag_parser(s),
                "help": text.replace("%", "%%"),  # argparse formats help with %
                "metavar": "{" + ",".join(s.choices) + "}" if s.choices else _METAVARS[s.kind],
            }
            if s.none_word is not None:
                options["metavar"] += "|" + s.none_word
            if s.kind is Kind.BOOL:
                options.update(nargs="?", const=True)
            group.add_argument(s.flag, **options)

    @classmethod
    def parse_flags(cls, args: argparse.Namespace | Sequence[str] | None = None) -> argparse.Namespace:
        """``args`` as a Namespace: parsed with this class's flags when it is a list (None: ``sys.argv``)."""
        if isinstance(args, argparse.Namespace):
            return args
        parser = argparse.ArgumentParser()
        cls.add_arguments(parser)
        return parser.parse_args(None if args is None else list(args))

    @classmethod
    def from_args(
        cls,
        args: argparse.Namespace | Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ):
        """The environment first, then the flags given in ``args`` (from ``add_arguments``), then ``overrides``.

        Raises:
            ConfigError: a value does not parse or breaks a rule.
        """
        namespace = cls.parse_flags(args)
        given = {
            s.field_name: getattr(namespace, s.dest) for s in cls.declared_settings() if hasattr(namespace, s.dest)
        }
        given.update({k: v for k, v in overrides.items() if v is not None})
        return cls._read(environ, given)

    @classmethod
    def coerce(cls, field_name: str, value: Any, where: str) -> Any:
        """A value from a structured file (YAML): text parsed as the setting's variable would be, lists as tuples.

        Args:
            field_name (`str`): the field it is for (settings and plain fields alike).
            value: as the file gave it (YAML already typed numbers and booleans).
            where (`str`): names the value in parse errors, e.g. "`replicas`" (callers add the file and entry).
        """
        if isinstance(value, list):
            return tuple(value)
        if isinstance(value, str):
            try:
                s = cls.setting_for(field_name)
            except KeyError:
                return value
            return s.parse(value, where)
        return value

    def replace(self, **changes: Any):
        """A copy with ``changes`` (checked again)."""
        return replace(self, **changes)


def _flag_parser(s: Setting) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            return s.parse(raw, s.flag)
        except ConfigError as e:
            # argparse reports this as "argument --flag: <message>" with the usage, and exits with status 2.
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse
