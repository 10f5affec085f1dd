"""The documentation cannot drift from the code (issue 39): the site builds with `mkdocs build --strict` (a broken link,
anchor or reference fails), its CLI reference is click's own, the README's links land, and every `fedactors ...`
command shown in README.md and docs/*.md parses with the real command line, those that would train under --dry-run.
In process, no Ray: the build is a subprocess of mkdocs (a few seconds), each dry run a fraction of one."""

from __future__ import annotations

import html
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from conftest import REPO, run_main

from fedactors.errors import FedActorsError

PAGES = sorted((REPO / "docs").glob("*.md"))
SOURCES = [REPO / "README.md", *PAGES]
# Commands shown but not dry-run, and why: each needs what only the reader has. Everything else that would train
# (fedactors run, fedactors sweep) is run with --dry-run.
PARSE_ONLY = {
    "...": "a fragment: the rest of the command is the reader's",
    "--resume": "continues a run in the reader's runs/",
    "--address": "attaches to a Ray cluster the reader started",
    "leaf:~": "LEAF's data, which fedactors does not download",
    "hf:~": "a Hugging Face dataset the reader saved",
    "npz:": "the reader's own arrays",
    "my_task.py": "the page's sketch of a task (its loader is `...`)",
}
# "Run A" of the pages is a run the reader made; a committed run stands in for it (its run.json replays).
STAND_INS = {"runs/A/run.json": "docs/runs/noniid-E1-B10-C0.1/run.json"}


@dataclass(frozen=True)
class Shown:
    """A command as a page shows it: where, the text, and whether it is a mention in prose (an inline span)."""

    source: str
    text: str
    inline: bool


def shown_commands(path: Path) -> list[Shown]:
    """Every `fedactors ...` command in a Markdown file: lines of code blocks (fenced or indented, `\\` continuations
    joined) and inline code spans in the prose."""
    text = path.read_text()
    found = []
    lines = text.splitlines()
    fence = None  # the open fence's language; "text" blocks are output, not commands
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else line.strip()[3:] or "sh"
        elif (fence in ("sh", "bash", "console") or fence is None and line.startswith("    ")) \
                and re.match(r"(\$ )?fedactors ", line.strip()):
            command = line.strip().removeprefix("$ ")
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + " " + lines[i].strip()
            found.append(Shown(f"{path.name}:{i + 1}", " ".join(command.split()), inline=False))
        i += 1
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for match in re.finditer(r"`(fedactors [^`]+)`", prose):
        found.append(Shown(path.name, " ".join(match.group(1).split()), inline=True))
    return found


def variants(command: str) -> list[list[str]]:
    """The argument lists a shown command stands for, after `fedactors`: a trailing comment and a pipe or redirect cut
    off, `...` dropped, and each alternative used at least once: `[--a | --b X]` (absent, --a, --b X) and `iid|noniid`."""
    command = re.sub(r"\s#\s.*$", "", command)
    depth, cut = 0, len(command)
    for k, char in enumerate(command):
        depth += (char == "[") - (char == "]")
        if depth == 0 and command[k:k + 3] in (" | ", " > "):
            cut = k
            break
    command = command[:cut]
    groups = list(re.finditer(r"(?<=\s)\[([^\[\]]*)\]", command))
    choices = [[""] + [g.strip() for g in group.group(1).split(" | ")] for group in groups]
    strings = []
    for n in range(max([len(c) for c in choices], default=1)):
        text = command
        for group, options in zip(reversed(groups), reversed(choices)):
            text = text[:group.start()] + options[n % len(options)] + text[group.end():]
        strings.append(text)
    result = []
    for text in strings:
        tokens = [t for t in shlex.split(text)[1:] if t != "..."]
        slots = [t.split("|") if "|" in t else [t] for t in tokens]
        for n in range(max(len(s) for s in slots) if slots else 1):
            result.append([s[n % len(s)] for s in slots])
    return result


def parse(args: list[str], strict: bool = True) -> click.Command:
    """`fedactors ARGS` through the real command line's parser (click's make_context: names, types, the --config
    callback), down to the command it names; starting nothing. Raises what click raises for a bad flag."""
    from fedactors.cli import cli

    command, names, parent = cli, ["fedactors"], None
    args = [a for a in args if a not in ("--help", "-h")]  # `fedactors run --help` names the command
    while isinstance(command, click.Group):
        if not args:
            return command  # a group named in prose (`fedactors runs`)
        ctx = click.Context(command, info_name=" ".join(names), parent=parent)
        sub = command.get_command(ctx, args[0])
        if sub is None:
            raise click.UsageError(f"no such command {args[0]!r}")
        names.append(args.pop(0))
        command, parent = sub, ctx
    if args:  # a command alone is a mention of it
        command.make_context(names[-1], args, parent=parent, resilient_parsing=not strict)
    return command


def signature(args: list[str]) -> tuple[str, ...]:
    """What a dry run of `args` checks beyond the parse: the flags and the words given them; numbers, --out and
    --run-id stand for any (the six Table 2 cells are one command with other E, B and rounds)."""
    def word(value: str, flag: str) -> str:
        try:
            float(value)
        except ValueError:
            return "#" if flag in ("--out", "--run-id") else value
        return "#"

    return tuple(word(arg, flag) for flag, arg in zip(["", *args], args))


def all_shown() -> list[Shown]:
    return [shown for path in SOURCES for shown in shown_commands(path)]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A directory like the repository's top for the commands to run in: examples/ and docs/ as they are, the files
    the pages show as code blocks headed `# NAME` (noniid-cnn.toml, grid.toml, my_task.py), and the stand-ins."""
    for name in ("examples", "docs"):
        (tmp_path / name).symlink_to(REPO / name)
    for path in SOURCES:
        for block in re.findall(r"```\w*\n# ([\w.-]+\.(?:toml|py))\n(.*?)```", path.read_text(), flags=re.DOTALL):
            (tmp_path / block[0]).write_text(block[1])
    for name, source in STAND_INS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / source, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_extraction_finds_the_commands_and_their_alternatives(tmp_path):
    """The reader of the pages must see what the test checks: spans, continuations, alternatives, comments."""
    page = """Run `fedactors run --task
mnist-2nn` or
```sh
fedactors run --partition iid|noniid \\
    --rounds 3 [--compress q8|q4]   # a comment
fedactors runs list [--redis URL | --runs-dir runs] | head
```
"""
    path = tmp_path / "page.md"
    path.write_text(page)
    shown = shown_commands(path)
    assert [s.text for s in shown] == ["fedactors run --partition iid|noniid --rounds 3 [--compress q8|q4] # a comment",
                                       "fedactors runs list [--redis URL | --runs-dir runs] | head",
                                       "fedactors run --task mnist-2nn"]
    assert variants(shown[0].text) == [["run", "--partition", "iid", "--rounds", "3"],
                                       ["run", "--partition", "noniid", "--rounds", "3"],
                                       ["run", "--partition", "iid", "--rounds", "3", "--compress", "q8"],
                                       ["run", "--partition", "noniid", "--rounds", "3", "--compress", "q4"]]
    assert variants(shown[1].text) == [["runs", "list"], ["runs", "list", "--redis", "URL"],
                                       ["runs", "list", "--runs-dir", "runs"]]


def test_a_renamed_flag_or_a_wrong_value_fails_the_parse():
    parse(["run", "--clients", "20", "--partition", "dirichlet", "--alpha", "0.5"])
    for bad in (["run", "--client", "20"], ["run", "--clients", "many"], ["run", "--partition", "sorted"],
                ["runz", "list"], ["runs", "ls"]):
        with pytest.raises(click.UsageError):
            parse(bad)


def test_every_command_shown_in_the_readme_and_the_docs_parses(workdir):
    """Each `fedactors ...` of README.md and docs/*.md, each alternative, through click: a renamed flag, a value of
    the wrong type or a command that is gone fails here. A mention in prose (`fedactors report --best METRIC`) needs
    only its flags' names; a committed run it names (docs/runs/...) must exist."""
    shown = all_shown()
    assert len(shown) > 80 and {s.text.split()[1] for s in shown} >= {"run", "report", "plot", "sweep", "runs",
                                                                        "strategies", "tasks"}
    problems = []
    for item in shown:
        for args in variants(item.text):
            try:
                try:
                    parse(args)
                except click.MissingParameter:
                    if not item.inline:
                        raise
                    parse(args, strict=False)
            except (click.ClickException, FedActorsError) as exc:  # FedActorsError: --config's file
                problems.append(f"{item.source}: fedactors {shlex.join(args)}: {exc}")
            for arg in args:
                if arg.startswith("docs/") and not list(REPO.glob(arg)):
                    problems.append(f"{item.source}: {arg} names no committed file")
    assert not problems, "\n".join(problems)


def test_every_command_shown_that_would_train_runs_under_dry_run(workdir, monkeypatch, capsys):
    """`fedactors run` and `fedactors sweep` as the pages show them, with --dry-run: the settings they combine are
    accepted (not only parsed), their files and tasks exist, and nothing starts."""
    monkeypatch.setenv("FEDACTORS_DATA", os.environ.get("FEDACTORS_DATA", str(REPO.parent / "shared" / "mnist")))
    before = sorted(workdir.rglob("*"))
    dry, problems = {}, []
    for item in all_shown():
        if item.inline or item.text.split()[1] not in ("run", "sweep") or any(m in item.text for m in PARSE_ONLY):
            continue
        for args in variants(item.text):
            args = [*args, *([] if "--dry-run" in args else ["--dry-run"])]
            if signature(args) in dry:  # the same flags and words as one run already (the parse test had its numbers)
                continue
            status, _, err = run_main(monkeypatch, capsys, *args)
            dry[signature(args)] = status
            if status != 0:
                problems.append(f"{item.source}: fedactors {shlex.join(args)}: exit {status}: {err.strip()}")
    assert not problems, "\n".join(problems)
    assert len(dry) >= 30, list(dry)  # the pages' runs, not an exemption that swallowed them
    assert sorted(workdir.rglob("*")) == before, "a dry run wrote"


def test_every_run_flag_is_explained_in_the_guide():
    """`fedactors run --help` is the reference; each of its flags is also named on a guide page (a new flag comes with
    its topic's page, as the README's table of flags did)."""
    from fedactors.cli import cli

    guide = " ".join(p.read_text() for p in PAGES if p.name not in ("cli.md", "api.md"))
    run = cli.get_command(click.Context(cli), "run")
    flags = [opt for param in run.params for opt in param.opts + param.secondary_opts
             if opt.startswith("--") and opt != "--help"]
    missing = [flag for flag in flags if not re.search(re.escape(flag) + r"(?![\w-])", guide)]
    assert not missing, f"not named on any page of docs/: {missing}"


def test_the_readme_stays_a_front_door():
    """The quick start and the links; each topic's detail goes on its page of docs/."""
    lines = (REPO / "README.md").read_text().splitlines()
    assert 150 <= len(lines) <= 250, f"README.md has {len(lines)} lines: move detail to its page in docs/"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built as `make docs` builds it (strict), into a directory of its own."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=240, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def test_the_site_builds_strictly_and_checks_links_and_anchors(site):
    import yaml

    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert config["strict"] is True
    assert {config["validation"][k] for k in ("not_found", "anchors", "omitted_files", "unrecognized_links")} == {"warn"}
    assert (site / "index.html").is_file() and (site / "privacy" / "index.html").is_file()
    # Every page of docs/ is in the site (an unlisted page is a warning, so an error).
    for page in PAGES:
        assert (site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")).is_file(), page.name


def test_the_cli_reference_is_clicks_own(site):
    """Every command and every flag of every command, as click has them today, is on the reference page."""
    from fedactors.cli import cli

    text = html.unescape(re.sub(r"<[^>]+>", "", (site / "cli" / "index.html").read_text()))
    ctx = click.Context(cli)

    def commands(group: click.Group, prefix: str):
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            yield f"{prefix} {name}", command
            if isinstance(command, click.Group):
                yield from commands(command, f"{prefix} {name}")

    for name, command in commands(cli, "fedactors"):
        assert f"Usage: {name}" in text or f"{name} [OPTIONS]" in text, name
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("-"):
                    assert opt in text, (name, opt)


def test_the_api_reference_has_the_front_door_and_the_protocol(site):
    text = html.unescape(re.sub(r"<[^>]+>", "", (site / "api" / "index.html").read_text()))
    for name in ("fedactors.api.run", "fedactors.api.resume", "fedactors.task.Task", "fedactors.config.RunConfig",
                 "Algorithm", "local_update", "aggregate", "LocalClient", "Reply"):
        assert name in text, name
    assert "Continue run_id from its newest valid checkpoint" in " ".join(text.split())  # resume's docstring


def test_the_readmes_links_land(site):
    """README.md is read on GitHub, not built: its links to docs/ pages and their anchors are checked against the
    site (the ids mkdocs gave the headings), its other links against the repository."""
    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert len(links) > 20
    for link in links:
        if re.match(r"https?://", link):
            continue
        target, _, anchor = link.partition("#")
        assert (REPO / target).exists(), link
        if anchor:
            assert target.startswith("docs/") and target.endswith(".md"), link
            page = Path(target).stem
            built = site / ("index.html" if page == "index" else f"{page}/index.html")
            landed = f'id="{anchor}"' in built.read_text()
            assert landed, f"README.md links to {link}: no such heading on that page"
