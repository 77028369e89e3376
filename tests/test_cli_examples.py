"""Every command line shown to users ends in a result or a usage error, never a traceback.

The command lines are read, not copied: from README.md (fenced shell blocks and inline code
such as the "What is in the box" table) and from the ``--help`` text of every ``edgewatch`` and
``edgewatch-agent`` command (a backticked example that starts with one of its subcommands). Each
runs as shown in an empty folder with its own ``EDGEWATCH_CACHE``, so a placeholder such as
``file.csv`` or ``NAME`` must give a usage error naming it. Three kinds run differently, to stay
short: commands that would run until stopped or for minutes get ``--help`` appended (their
arguments are still parsed), ``edgewatch-agent simulate`` publishes the same number of steps to a
real Mosquitto in one second, and ``./dev`` lines are checked against the script's own list.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cloud.cli import build_parser as cloud_parser
from edge.cli import build_parser as agent_parser
from edge.cliutil import EXIT_PIPE_CLOSED
from localdev.stack import Mosquitto, free_port, missing_tools
from tests.tools import unavailable

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = {"edgewatch": "cloud.cli", "edgewatch-agent": "edge.cli"}
# run until stopped, or start brokers, or train for minutes: checked with --help appended
LONG_RUNNING = ("edgewatch stack up", "edgewatch stack restart", "edgewatch retrain --on-drift", "edgewatch demo")
TIMEOUT_S = 60


def readme_commands() -> list[str]:
    """Shell lines of README.md's fenced bash/sh blocks and its inline code that start with a program."""
    text = (ROOT / "README.md").read_text()
    found: list[str] = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, flags=re.S):
        found += [line.split(" #")[0].strip() for line in block.splitlines()]
    found += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return [c for c in dict.fromkeys(_program_form(c) for c in found) if c]


def help_commands() -> list[str]:
    """Backticked examples in any ``--help`` text that start with a subcommand of that command."""
    found: list[str] = []
    for prog, parser in (("edgewatch", cloud_parser()), ("edgewatch-agent", agent_parser())):
        for path, sub in _parsers(parser, prog):
            words = _choices(sub)
            for span in re.findall(r"`([^`]+)`", sub.format_help()):
                span = " ".join(span.split())
                if span.split(" ")[0] in words:
                    found.append(f"{path} {span}")
                elif span.split(" ")[0] in PROGRAMS:
                    found.append(span)
    return list(dict.fromkeys(found))


def _program_form(line: str) -> str:
    """``.venv/bin/edgewatch x`` as ``edgewatch x``; "" for lines that are not one of our commands."""
    words = line.split()
    if not words:
        return ""
    words[0] = Path(words[0]).name if words[0].endswith(tuple(PROGRAMS)) else words[0]
    return " ".join(words) if words[0] in (*PROGRAMS, "./dev") else ""


def _parsers(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def _choices(parser: argparse.ArgumentParser) -> set[str]:
    """Subcommand names and positional choices (``registry list|show|...``) of one parser."""
    out: set[str] = set()
    for action in parser._actions:
        if not action.option_strings and action.choices:
            out.update(action.choices)
    return out


def expand(command: str) -> list[str]:
    """``registry register/promote/publish`` is three commands; a placeholder path like ``model/`` stays."""
    words = command.split()
    for i, word in enumerate(words):
        if re.fullmatch(r"[a-z]+(?:/[a-z]+)+", word):
            return [c for alt in word.split("/") for c in expand(" ".join([*words[:i], alt, *words[i + 1:]]))]
    return [command]


ALL = list(dict.fromkeys(c for line in readme_commands() + help_commands() for c in expand(line)))


def test_the_examples_were_found() -> None:
    """The extraction is not silently empty: the README's simulator line and a help example are in it."""
    assert "edgewatch-agent simulate --devices 10 --rate 10 --duration 60" in ALL
    assert "edgewatch registry publish" in ALL and "edgewatch keys generate" in ALL and "./dev demo" in ALL


@pytest.fixture(scope="module")
def mqtt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A Mosquitto of this module's own, on a free port (the simulator needs nothing else)."""
    if any(m.startswith("mosquitto") for m in missing_tools()):
        unavailable("the simulate example needs mosquitto (apt-get install mosquitto)")
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"), free_port())
    broker.start()
    yield broker.port
    broker.stop()


def _argv(command: str, mqtt_port: int, tmp: Path) -> tuple[list[str], str]:
    """What to run for one shown command line, and how to judge it: "help", "simulate" or "as shown"."""
    words = shlex.split(command)
    program = [sys.executable, "-m", PROGRAMS[words[0]]]
    if command.startswith(LONG_RUNNING):
        return program + words[1:] + ["--help"], "help"
    if words[:2] == ["edgewatch-agent", "simulate"] and "--help" not in words and "--replay" not in words:
        args = words[2:]
        rate = float(_value(args, "--rate", "10")) or 1.0
        steps = rate * float(_value(args, "--duration", "60"))  # the same steps, published in one second
        return program + words[1:] + ["--rate", f"{steps:g}", "--duration", "1", "--port", str(mqtt_port),
                                 "--truth", str(tmp / "truth.json")], "simulate"
    return program + words[1:], "as shown"


def _value(args: list[str], flag: str, default: str) -> str:
    return args[args.index(flag) + 1] if flag in args else default


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEWATCH_")}
    env |= {"EDGEWATCH_CACHE": str(cwd / "cache"), "HOME": str(cwd / "home"), "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def test_every_shown_command_line_ends_without_a_traceback(mqtt: int, tmp_path: Path) -> None:
    dev = (ROOT / "dev").read_text()
    jobs: list[tuple[str, list[str], str, Path]] = []
    for i, command in enumerate(ALL):
        folder = tmp_path / f"c{i}"  # an empty folder of its own: nothing one command writes helps another
        folder.mkdir()
        if command.startswith("./dev"):
            sub = command.split()[1]
            assert f"#   ./dev {sub}" in dev, f"{command!r}: the dev script does not list {sub!r}"
            if sub != "demo":
                continue
            command = "edgewatch demo " + " ".join(command.split()[2:])  # ./dev demo passes its arguments on
        jobs.append((command, *_argv(command, mqtt, folder), folder))
    with ThreadPoolExecutor(max_workers=3) as pool:  # the simulators one at a time: each floods the one broker for a second
        others = pool.map(lambda job: _run(job[1], job[3]) if job[2] != "simulate" else None, jobs)
        results = [out or _run(job[1], job[3]) for job, out in zip(jobs, list(others), strict=True)]
    failures = []
    for (command, argv, kind, _folder), out in zip(jobs, results, strict=True):
        shown = f"{command!r} (ran {' '.join(argv[2:])}): exit {out.returncode}\n{out.stderr[-2000:]}"
        if "Traceback" in out.stderr or out.returncode not in (0, 1, 2):
            failures.append(shown)
        elif kind == "help" and out.returncode != 0:
            failures.append(shown)
        elif kind == "simulate" and (out.returncode != 0 or "faults injected" not in out.stdout):
            failures.append(shown)
        elif out.returncode != 0 and not out.stderr.strip() and not out.stdout.strip():
            failures.append(shown + "(failed without saying why)")
    assert not failures, "\n\n".join(failures)


def test_simulate_with_its_output_pipe_closed_ends_quietly(mqtt: int, tmp_path: Path) -> None:
    """``edgewatch-agent simulate ... | head -0``: the summary line cannot be written; exit 141, no traceback."""
    argv, _kind = _argv("edgewatch-agent simulate --devices 2 --rate 10 --duration 10", mqtt, tmp_path)
    read, write = os.pipe()
    os.close(read)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEWATCH_")} | {"PYTHONPATH": str(ROOT)}
        out = subprocess.run(argv, stdout=write, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env, timeout=TIMEOUT_S)
    finally:
        os.close(write)
    assert out.returncode == EXIT_PIPE_CLOSED and "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr
