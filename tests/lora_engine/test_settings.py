"""The one settings parser and the declarative machinery every config class uses. Pure: no torch, no engine."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from lora_engine.errors import ConfigError
from lora_engine.settings import (
    Kind,
    Settings,
    parse_bool,
    parse_bytes,
    parse_choice,
    parse_float,
    parse_int,
    parse_list,
    parse_seconds,
    setting,
)

pytestmark = pytest.mark.pure


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1", True), ("true", True), ("YES", True), (" On ", True), ("0", False), ("False", False), ("no", False)]
    + [("OFF", False)],
)
def test_booleans_have_one_meaning(raw, value):
    assert parse_bool(raw, "X") is value


@pytest.mark.parametrize("raw", ["", "2", "maybe", "t", "enabled", "1.0"])
def test_anything_else_is_not_a_boolean(raw):
    # Not silently False: a typo in a switch must not turn a feature off.
    with pytest.raises(ConfigError, match=rf"^X must be a boolean \(1/true/yes/on or 0/false/no/off\) but is '{raw}'$"):
        parse_bool(raw, "X")


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("4GiB", 4 << 30),
        ("512MiB", 512 << 20),
        ("512 mib", 512 << 20),
        ("1.5GiB", 3 << 29),
        ("2GB", 2 * 10**9),
        ("10kb", 10_000),
        ("1KiB", 1024),
        ("1e9", 10**9),
        ("1073741824", 1 << 30),
        ("1_000", 1000),
        ("1.1KB", 1100),  # exact: no float rounding
        ("7B", 7),
        ("0", 0),
        ("123456789012345678901", 123456789012345678901),  # exact, not through a float
    ],
)
def test_byte_sizes(raw, value):
    assert parse_bytes(raw, "SIZE") == value


@pytest.mark.parametrize(
    "raw", ["4XB", "lots", "GiB", "1.5", "0.0003KB", "nan", "inf", "", "4 GiB extra", "1e999999999"]
)
def test_bad_byte_sizes_name_the_variable_and_the_text(raw):
    with pytest.raises(ConfigError, match=rf"^SIZE must be .*but is '{raw}'"):
        parse_bytes(raw, "SIZE")


@pytest.mark.parametrize(
    ("raw", "value"),
    [("20", 20.0), ("2.5", 2.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1.5h", 5400.0), ("0", 0.0)],
)
def test_durations_are_seconds(raw, value):
    assert parse_seconds(raw, "T") == value


@pytest.mark.parametrize("raw", ["5d", "soon", "1ms", "nan", "inf", "1e999s", "1e300s", ""])
def test_bad_durations(raw):
    with pytest.raises(
        ConfigError, match=r"^T must be a duration in seconds \(30, 30s, 5m, 1h\) (of at most 30 digits )?but is"
    ):
        parse_seconds(raw, "T")


def test_ints_floats_lists_and_choices():
    assert parse_int(" 64 ", "N") == 64 and parse_int("-1", "N") == -1
    for raw in ("2.5", "1e3", "x", ""):
        with pytest.raises(ConfigError, match=f"^N must be an integer but is '{raw}'$"):
            parse_int(raw, "N")
    assert parse_float("2.5", "F") == 2.5 and parse_float("1e-3", "F") == 0.001
    for raw in ("nan", "inf", "-inf", "x"):
        with pytest.raises(ConfigError, match=f"^F must be a finite number but is '{raw}'$"):
            parse_float(raw, "F")
    assert parse_list(" a, b,,c ,", "L") == ("a", "b", "c") and parse_list("", "L") == ()
    assert parse_choice("info", "LEVEL", ("DEBUG", "INFO")) == "INFO"
    with pytest.raises(ConfigError, match="^LEVEL must be one of DEBUG, INFO but is 'loud'$"):
        parse_choice("loud", "LEVEL", ("DEBUG", "INFO"))


@dataclass(frozen=True)
class Knobs(Settings):
    """A config class as the project writes them: fields, each with a comment, nothing else."""

    settings_title: ClassVar[str] = "knobs"

    # A plain text setting with the default flag name.
    name: str = setting("x", env="KNOBS_NAME", help="a name")
    # Bounded.
    count: int = setting(3, env="KNOBS_COUNT", kind=Kind.INT, at_least=1, at_most=10, help="how many")
    # A budget.
    budget: int = setting(1 << 30, env="KNOBS_BUDGET", kind=Kind.BYTES, help="how much")
    # A switch, with its own flag.
    loud: bool = setting(False, env="KNOBS_LOUD", flag="--shout", kind=Kind.BOOL, help="louder")
    # None is a value, spelled "auto".
    share: float | None = setting(
        None, env="KNOBS_SHARE", kind=Kind.FLOAT, none_word="auto", shown_default="auto", help="a share, 100%"
    )
    mode: str = setting("fast", env="KNOBS_MODE", choices=("fast", "slow"), help="the mode")
    wait_s: float = setting(30.0, env="KNOBS_WAIT_S", kind=Kind.SECONDS, help="a wait")
    dirs: tuple[str, ...] = setting((), env="KNOBS_DIRS", kind=Kind.LIST, help="folders")
    # Not a setting: set from code only.
    extra: dict = field(default_factory=dict)


def test_from_env_reads_each_kind_and_ignores_empty_variables():
    k = Knobs.from_env(
        {
            "KNOBS_NAME": " y ",
            "KNOBS_COUNT": "7",
            "KNOBS_BUDGET": "2GiB",
            "KNOBS_LOUD": "yes",
            "KNOBS_SHARE": "AUTO",
            "KNOBS_MODE": "Slow",
            "KNOBS_WAIT_S": "2m",
            "KNOBS_DIRS": "a,b",
            "UNRELATED": "1",
        }
    )
    assert (k.name, k.count, k.budget, k.loud, k.share, k.mode, k.wait_s, k.dirs) == (
        "y",
        7,
        2 << 30,
        True,
        None,
        "slow",
        120.0,
        ("a", "b"),
    )
    assert Knobs.from_env({"KNOBS_COUNT": "", "KNOBS_SHARE": "0.5"}) == Knobs(share=0.5)
    assert Knobs.from_env({}, count=4, name=None, extra={"a": 1}) == Knobs(count=4, extra={"a": 1})


def test_rules_hold_however_the_value_is_given():
    with pytest.raises(ConfigError, match=r"^KNOBS_COUNT must be an integer but is 'many'$"):
        Knobs.from_env({"KNOBS_COUNT": "many"})
    with pytest.raises(ConfigError, match=r"^`count` \(KNOBS_COUNT, --count\) must be at least 1 but is 0$"):
        Knobs.from_env({"KNOBS_COUNT": "0"})
    with pytest.raises(ConfigError, match=r"^`count` \(KNOBS_COUNT, --count\) must be at most 10 but is 11$"):
        Knobs(count=11)
    with pytest.raises(ConfigError, match=r"^`mode` \(KNOBS_MODE, --mode\) must be one of fast, slow but is 'FAST'$"):
        Knobs(mode="FAST")  # code gives the declared spelling; only text is matched in any case


def test_flags_override_the_environment_and_document_it():
    parser = argparse.ArgumentParser()
    Knobs.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "knobs (each flag overrides its environment variable)" in text
    assert "[env: KNOBS_BUDGET] [default: 1GiB] how much" in text
    assert "[env: KNOBS_LOUD] [default: false] louder" in text and "--shout [BOOL]" in text
    assert "[env: KNOBS_SHARE] [default: auto] a share, 100%" in text and "--share X|auto" in text
    assert "[env: KNOBS_WAIT_S] [default: 30] a wait" in text and "[default: none] folders" in text
    assert "--mode {fast,slow}" in text and "extra" not in text

    env = {"KNOBS_COUNT": "9", "KNOBS_NAME": "from-env", "KNOBS_LOUD": "1"}
    k = Knobs.from_args(parser.parse_args(["--count", "2", "--budget", "1e6", "--shout", "off"]), environ=env)
    assert (k.count, k.budget, k.name, k.loud) == (2, 10**6, "from-env", False)
    # A boolean flag alone means true; a list of strings is parsed with this class's flags.
    assert Knobs.from_args(["--shout", "--dirs", "a, b"], environ={}) == Knobs(loud=True, dirs=("a", "b"))
    assert Knobs.from_args([], environ={}, count=5).count == 5
    # A flag given may say None ("auto") over the environment; a flag not given leaves the environment alone.
    assert Knobs.from_args(["--share", "auto"], environ={"KNOBS_SHARE": "0.5"}).share is None
    assert Knobs.from_args([], environ={"KNOBS_SHARE": "0.5"}).share == 0.5


def test_a_bad_flag_is_a_usage_error_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        Knobs.from_args(["--budget", "2 lots"], environ={})
    assert exit_info.value.code == 2
    assert "argument --budget: --budget must be a size in bytes" in capsys.readouterr().err


def test_file_values_are_read_as_the_variables_are():
    assert Knobs.coerce("budget", "8GiB", "`budget`") == 8 << 30
    assert Knobs.coerce("share", "auto", "`share`") is None
    assert Knobs.coerce("dirs", ["a", "b"], "`dirs`") == ("a", "b")
    assert Knobs.coerce("count", 4, "`count`") == 4 and Knobs.coerce("extra", "text", "`extra`") == "text"
    with pytest.raises(ConfigError, match=r"^`count` must be an integer but is 'four'$"):
        Knobs.coerce("count", "four", "`count`")


def test_declarations_are_checked_when_the_class_is_written():
    with pytest.raises(TypeError, match="choices go with kind=Kind.CHOICE"):
        setting("a", env="E", help="h", kind=Kind.INT, choices=("a",))
    with pytest.raises(TypeError, match="a flag starts with '--'"):
        setting("a", env="E", help="h", flag="-e")


def test_the_settings_module_imports_no_torch():
    code = "import sys, lora_engine.settings, lora_engine.config, lora_engine.request; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
