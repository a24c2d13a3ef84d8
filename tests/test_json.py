"""One JSON schema (docs/json.md): every command that prints a result has ``--json``, and every
command run with ``--json`` that fails prints ``{"error": {"code", "exit_code", "message"}}`` on stdout,
its exit code the process's, as well as the error in words on stderr; the service's errors are the
same objects."""
from __future__ import annotations

import importlib
import json
import os
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from flowing import configs, platform  # noqa: F401  (fixtures)
from jsonschema_rules import violations

from sscard.apdu.commands import VERIFY_SW
from sscard.apdu.errors import SSCardError
from sscard.apdu.status import error_for
from sscard.terminal.cli import exits, main
from sscard.terminal.cli.prompts import Asked

#: commands that run until stopped (a server, a virtual card): they print no result
SERVERS = {"simulate", "central serve", "serve"}
#: commands that list what there is, or wait for readers and the PC/SC service to come, and so refuse
#: nothing a caller gives them
NOTHING_TO_REFUSE = {"readers", "watch"}


def commands(group: click.Group = main, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    for name in group.list_commands(click.Context(group)):
        command = group.get_command(click.Context(group), name)
        assert command is not None, name
        if isinstance(command, click.Group):
            if command.invoke_without_command:  # a command of its own as well (simulate)
                yield " ".join((*path, name)), command
            yield from commands(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


def options(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in getattr(param, "opts", [])}


def test_every_command_that_prints_a_result_has_json():
    assert {path for path, command in commands() if "--json" not in options(command)} == SERVERS


#: values for the options asked at a prompt when not given (a valid ID number, any other text)
ANSWERS = {"--id-number": "330302198506151239", "--type": "outpatient"}


def answered(command: click.Command) -> list[str]:
    """The options the command would ask for at a prompt, given (those taken only at the prompt, such
    as the ID number, come on standard input: :func:`piped`)."""
    return [arg for param in command.params if isinstance(param, Asked) and not param.hidden
            for arg in (param.opts[0], ANSWERS.get(param.opts[0], "X1"))]


def piped(command: click.Command) -> str:
    """Standard input answering the questions that are never options on the command line."""
    return "".join(f"{ANSWERS[param.opts[0]]}\n" for param in command.params if isinstance(param, Asked) and param.hidden)


def failing(path: str, command: click.Command, tmp: Path) -> list[str]:
    """Arguments that make the command fail with one of our errors before it does anything."""
    given = options(command)
    if path == "simulate reset":
        return ["no-such-card"]
    if path == "config init":  # no number for this terminal, and no one at a prompt to ask: a usage error
        return ["--config", str(tmp / "t.toml")]
    if "--config" in given:
        return [*answered(command), "--config", str(tmp / "no-such-terminal.toml")]
    if "--reader" in given:
        return [*answered(command), "--reader", "sim:no-such-card"]
    damaged = tmp / "damaged.sqlite"
    damaged.write_bytes(b"this is not an SQLite file, it was damaged" * 50)
    if "--db" in given:
        return ["--db", str(damaged)]
    if path == "demo":
        (tmp / "day").mkdir()
        damaged.rename(tmp / "day" / "platform.sqlite")
        return ["--dir", str(tmp / "day")]
    raise AssertionError(f"no failing case for {path}: add one")


CASES = [path for path, command in commands() if path not in SERVERS | NOTHING_TO_REFUSE]


@pytest.mark.parametrize("path", CASES)
def test_an_error_under_json_is_the_error_object_on_stdout(path, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("SSCARD_CONFIG", raising=False)
    monkeypatch.delenv("SSCARD_QUEUE", raising=False)
    command = dict(commands())[path]
    result = CliRunner().invoke(main, [*path.split(), *failing(path, command, tmp_path), "--json"], input=piped(command))
    assert result.exit_code not in (0, 1), result.output  # one of ours, not a bug
    body = json.loads(result.stdout)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "exit_code", "message"}
    error = body["error"]
    assert error["exit_code"] == result.exit_code and error["code"].islower() and " " not in error["code"]
    assert error["message"] in result.stderr


def test_a_prompt_answered_by_ctrl_d_under_json_is_the_interrupted_error(tmp_path, monkeypatch):
    monkeypatch.setattr("sscard.terminal.cli.prompts.at_terminal", lambda: True)  # a clerk at a terminal
    result = CliRunner().invoke(main, ["desk", "cancel", "--config", str(tmp_path / "t.toml"), "--json"], input="")
    assert result.exit_code == 130 and "Visit number" in result.stderr  # the prompt is not on stdout
    assert json.loads(result.stdout) == {"error": {"code": "interrupted", "exit_code": 130, "message": "Interrupted."}}
    monkeypatch.undo()  # no one at a terminal: the pipe's end is no answer, a usage error
    piped = CliRunner().invoke(main, ["desk", "cancel", "--config", str(tmp_path / "t.toml"), "--json"], input="")
    assert piped.exit_code == 2 and "no Visit number (mdtrt_id) on standard input" in json.loads(piped.stdout)["error"]["message"]


def test_without_json_stdout_stays_empty_on_an_error(tmp_path):
    result = CliRunner().invoke(main, ["read", "--reader", "sim:no-such-card"])
    assert result.exit_code == 12 and result.stdout == "" and "no-such-card" in result.stderr


def test_the_code_is_the_class_name_in_snake_case():
    assert exits.error_object(error_for(0x63C2, VERIFY_SW)) == {
        "code": "wrong_pin", "exit_code": 6, "message": "Wrong PIN: 2 tries left before the PIN is blocked (SW 63C2)"}
    assert SSCardError("x").code == "ss_card"


def test_the_pin_commands_answer_json(tmp_path):
    runner = CliRunner()
    verified = runner.invoke(main, ["verify-pin", "-r", "sim:adult", "--pin-stdin", "--json"], input="246810\n")
    assert verified.exit_code == 0 and json.loads(verified.stdout) == {"reader": "sim:adult", "verified": True}
    wrong = runner.invoke(main, ["verify-pin", "-r", "sim:adult", "--pin-stdin", "--json"], input="000000\n")
    assert wrong.exit_code == 6 and json.loads(wrong.stdout)["error"]["code"] == "wrong_pin"
    changed = runner.invoke(main, ["change-pin", "-r", "sim:adult", "--pin-stdin", "--json"], input="246810\n902468\n")
    assert changed.exit_code == 0 and json.loads(changed.stdout) == {"reader": "sim:adult", "changed": True}
    reset = runner.invoke(main, ["reset-pin", "-r", "sim:adult", "--pin-stdin", "--json"],
                          input="330302198506151239\n902468\n")
    assert reset.exit_code == 0, reset.output
    body = json.loads(reset.stdout)
    assert body["pin_reset"] is True and body["pin_tries_left"] == 3
    assert body["holder"] == {"name": "张伟", "id_number": "330302********1239", "card_number": body["holder"][
        "card_number"], "issuing_region": "330300"} and "330302198506151239" not in reset.stdout


def test_config_init_answers_json(tmp_path):
    result = CliRunner().invoke(main, ["config", "init", "--config", str(tmp_path / "t.toml"), "--terminal-number",
                                       "4", "--json"])
    body = json.loads(result.stdout)
    assert result.exit_code == 0 and body["terminal_no"] == 4 and body["path"] == str(tmp_path / "t.toml")
    assert body["device"].startswith("DEV-")


def error_classes(root: type[SSCardError] = SSCardError) -> Iterator[type[SSCardError]]:
    for sub in root.__subclasses__():
        yield sub
        yield from error_classes(sub)


def test_docs_json_lists_every_error_code_under_its_exit_code():
    for package in ("sscard.apdu", "sscard.drivers", "sscard.message", "sscard.terminal", "sscard.central"):
        # every module: every error class
        for module in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
            importlib.import_module(module.name)
    rows = {int(line.split("|")[1]): line for line in Path("docs/json.md").read_text().splitlines()
            if line.startswith("| ") and line.split("|")[1].strip().isdigit()}
    classes = set(error_classes())
    assert len(classes) > 50
    for error in classes:
        code = error.__new__(error).code
        assert f"`{code}`" in rows.get(exits.exit_code(error), ""), f"{error.__name__}: `{code}` (exit {exits.exit_code(error)})"


# --- one vocabulary (docs/json.md): every command's result, on a day at the virtual platform -------

def day_results(configs: dict[str, Path], tmp: Path) -> dict[str, Any]:
    """Each command with ``--json`` run once as a clerk would on one day: its path -> what it printed."""
    printed: dict[str, Any] = {}

    def run(config: str, args: str, input: str = "", exit_code: int = 0) -> Any:
        words = args.split()
        path = " ".join(w for w in words[:2] if not w.startswith("-"))
        path = path if path in dict(commands()) else words[0]
        result = CliRunner().invoke(main, [*words, "--json"], input=input, env={"SSCARD_CONFIG": str(configs[config])})
        assert result.exit_code == exit_code, (args, result.output)
        printed[path] = body = json.loads(result.stdout)
        return body

    run("clinic", "read -r sim:adult")
    run("clinic", "auth -r sim:adult")
    run("clinic", "verify-pin -r sim:adult --pin-stdin", "246810\n")
    run("clinic", "change-pin -r sim:adult --pin-stdin", "246810\n902468\n")
    run("bank", "reset-pin -r sim:adult --pin-stdin", "330302198506151239\n902468\n")
    run("bank", "bank activate -r sim:not-activated-zhou --pin-stdin", "330303196811052226\n386152\n386152\n")
    visit = run("clinic", "desk register -r sim:not-activated --type outpatient --department 内科 --pin-stdin",
                "123456\n")["mdtrt_id"]
    run("clinic", f"desk settle -r sim:not-activated --visit {visit} --bill B0001 --item 诊查费:1:20.00 "
                  "--item 血常规:1:35.00 --pin-stdin", "123456\n")
    run("clinic", "desk refund --bill B0001")
    run("clinic", f"desk cancel --visit {visit}")
    run("clinic", "pharmacy activate --old-reader sim:old-medical-lina -r sim:not-activated --pin-stdin", "123456\n")
    run("clinic", "pharmacy purchase -r sim:not-activated --sale T0001 --item 阿莫西林胶囊:2:12.50 --pin-stdin",
        "123456\n")
    run("clinic", "pharmacy refund --sale T0001")
    run("clinic", "kiosk -r sim:not-activated --pin-stdin", "123456\n")
    run("clinic", "reconcile")
    run("clinic", "queue status")
    run("clinic", "queue list")
    run("clinic", "queue upload")
    run("clinic", "queue retry-dead")
    run("clinic", "queue resolve")
    run("clinic", "config show")
    run("clinic", f"config init --config {tmp / 'new.toml'} --terminal-number 5")
    run("clinic", f"central show --db {configs['clinic'].parent.parent / 'platform.sqlite'}")
    run("clinic", f"demo --dir {tmp / 'demo'}")
    run("clinic", "simulate reset adult")
    return printed


#: checked where a reader of pcscd's is at hand (tests/test_pcsc.py): they list and watch PC/SC readers
PCSC_ONLY = {"readers", "watch"}
#: commands meant to show the whole ID number (the card's data, as read)
FULL_ID = {"read"}


def test_every_json_result_speaks_one_vocabulary(configs, tmp_path):
    printed = day_results(configs, tmp_path)
    assert set(printed) == {path for path, command in commands() if "--json" in options(command)} - PCSC_ONLY
    problems = {path: violations(body, full_id=path in FULL_ID) for path, body in printed.items()}
    wrong = {path: found for path, found in problems.items() if found}
    assert not wrong, json.dumps(wrong, ensure_ascii=False, indent=1)


def test_json_is_read_first_wherever_it_stands():
    for args in (["queue", "list", "--limit", "0", "--json"], ["queue", "list", "--json", "--limit", "0"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and json.loads(result.stdout)["error"]["code"] == "usage", args


def test_a_stream_command_prints_its_error_on_one_line_too():
    result = CliRunner().invoke(main, ["watch", "--count", "0", "--json"])
    assert result.exit_code == 2 and len(result.stdout.splitlines()) == 1
    assert json.loads(result.stdout)["error"]["code"] == "usage"


def test_a_stdout_closed_by_its_reader_is_a_quiet_end():
    import subprocess
    import sys

    for args in (["read", "--json"], ["central", "show", "--help"]):
        reader, writer = os.pipe()
        os.close(reader)  # `| head` gone before the command writes
        try:
            done = subprocess.run([sys.executable, "-c", "from sscard.terminal.cli import main; main()", *args],
                                  stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60)
        finally:
            os.close(writer)
        assert done.returncode == 0 and done.stderr.count("Error") == 0, (args, done.stderr)
        assert "Broken pipe" not in done.stderr and "Traceback" not in done.stderr
