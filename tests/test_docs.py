"""The documents name only what the CLI has: every `himr-pipe COMMAND` in README.md, docs/*.md and the manifest's
`create` record (detection's names the command that trains it) is a command of the click group, and every option
shown on a himr-pipe command line is one that command accepts. The README once sent detection users to a
`himr-pipe train-detection` that never existed; this test reads the documents as a user copies from them."""
import re
import shlex
from pathlib import Path

import pytest

from conftest import encrypt, manifest

TOP = Path(__file__).resolve().parent.parent
DOCS = [TOP / "README.md", *sorted((TOP / "docs").glob("*.md"))]
PROGRAMS = {"himr-pipe", "himr_pipe.cli"}  # the script, and `python -m` / `torchrun -m` of its module
FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1[ \t]*$", re.M | re.S)
INLINE = re.compile(r"`([^`]+)`")  # markdown lets inline code run across a line break
SEPARATORS = re.compile(r"&&|\|\||[;|]")


def code_of(text: str) -> list[str]:
    """The fenced blocks, then the inline code of the prose around them."""
    blocks = [m.group(2) for m in FENCE.finditer(text)]
    return blocks + [s.replace("\n", " ") for s in INLINE.findall(FENCE.sub("", text))]


def invocations(code: str) -> list[tuple[str, list[str]]]:
    """(command, its tokens) for each himr-pipe call in a piece of code: continuation lines joined, chained calls
    (&&, ;, |) split, comments dropped. Usage brackets (`[--top-k 5]`) and paired flags (`--flip/--no-flip`) are
    undone so that each option is one token."""
    calls = []
    for line in re.sub(r"\\\n", " ", code).splitlines():
        for part in SEPARATORS.split(line):
            try:
                tokens = shlex.split(part, comments=True)
            except ValueError:  # an unbalanced quote in a usage line: words are enough here
                tokens = part.split()
            starts = [i for i, t in enumerate(tokens) if t in PROGRAMS]
            if not starts:
                continue
            rest = tokens[starts[0] + 1:]
            if not rest or rest[0].isupper():  # `himr-pipe` alone, or a placeholder: `himr-pipe COMMAND --help`
                continue
            calls.append((rest[0], rest[1:]))
    return calls


def is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def options_in(tokens: list[str]) -> list[str]:
    opts = []
    for t in tokens:
        for piece in t.strip("[](),").split("/"):
            if piece.startswith("-") and len(piece) > 1 and not is_number(piece):
                opts.append(piece.split("=")[0])
    return opts


def problems_of(calls: list[tuple[str, list[str]]], where: str, check_options: bool = True) -> list[str]:
    """What the CLI lacks of these calls, one line each."""
    import click

    from himr_pipe.cli import main

    helps = set(main.context_settings.get("help_option_names", ["--help"]))
    group_opts = {o for p in main.params for o in p.opts + p.secondary_opts} | helps
    found = []
    for name, tokens in calls:
        if name.startswith("-"):  # a group option: himr-pipe --help, --version
            if name not in group_opts:
                found.append(f"{where}: himr-pipe has no option {name}")
            continue
        cmd = main.commands.get(name)
        if cmd is None:
            found.append(f"{where}: himr-pipe has no command {name!r} (it has {', '.join(sorted(main.commands))})")
            continue
        if not check_options:
            continue
        accepted = {o for p in cmd.params for o in p.opts + p.secondary_opts if o.startswith("-")} | helps
        # a command that passes what follows its arguments on (timm-train: everything after TRAIN_PY goes to
        # timm's train.py) accepts any option there
        passes_on = any(isinstance(p, click.Argument) and p.nargs == -1 for p in cmd.params)
        for opt in options_in(tokens):
            if opt not in accepted and not passes_on:
                found.append(f"{where}: himr-pipe {name} has no option {opt}")
    return found


def test_the_parser_finds_what_a_reader_would_copy():
    """The reader of the documents is the test's subject, so it is tested too: continuations, chains, comments,
    usage brackets, paired flags, inline code and the `-m` module form each yield their commands and options."""
    text = ("Run `himr-pipe verify OUT --decode` first.\n\n```bash\n"
            "pip install x && himr-pipe sample-data /tmp/s && himr-pipe encrypt-shards /tmp/s /tmp/o \\\n"
            "  --shard-size 16 [--flip/--no-flip]   # --not-an-option in a comment\n"
            "torchrun --nproc_per_node 8 -m himr_pipe.cli train enc --out runs --lr -1e-3\n"
            "himr-pipe COMMAND --help\n```\n")
    calls = [c for code in code_of(text) for c in invocations(code)]
    assert sorted((name, options_in(tokens)) for name, tokens in calls) == [
        ("encrypt-shards", ["--shard-size", "--flip", "--no-flip"]), ("sample-data", []),
        ("train", ["--out", "--lr"]), ("verify", ["--decode"])]
    assert problems_of(calls, "sample") == []
    bad = invocations("himr-pipe train-detection OUT\nhimr-pipe train OUT --out R --no-such-flag")
    found = problems_of(bad, "sample")
    assert len(found) == 2 and found[0].startswith("sample: himr-pipe has no command 'train-detection'")
    assert found[1] == "sample: himr-pipe train has no option --no-such-flag"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(TOP).as_posix())
def test_every_command_and_option_the_documents_show_exists(doc):
    calls = [c for code in code_of(doc.read_text()) for c in invocations(code)]
    if doc.name == "README.md":  # the README shows one example per command: all of them, none missing
        from himr_pipe.cli import main

        assert {name for name, _ in calls} >= set(main.commands)
    assert problems_of(calls, doc.relative_to(TOP).as_posix()) == []


def test_the_manifests_create_record_names_only_real_commands(sample_src, tmp_path):
    """The manifest tells whoever holds OUT how to build and train its model; for detection it names the himr-pipe
    command that trains it, which must exist and accept what it shows."""
    from himr_pipe.sample_data import make_detection_sample

    encrypt(sample_src, tmp_path / "cls", "--shard-size", "16")
    make_detection_sample(tmp_path / "coco", train_images=3, val_images=0, seed=3)
    encrypt(tmp_path / "coco" / "train2017", tmp_path / "det", "--size", "128")
    for kind in ("cls", "det"):
        create = manifest(tmp_path / kind)["model"]["create"]
        calls = [c for m in re.finditer(r"himr-pipe [^)]*", create) for c in invocations(m.group(0))]
        if kind == "det":
            assert [name for name, _ in calls] == ["train"], create
        assert problems_of(calls, f"{kind} manifest's create") == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(TOP).as_posix())
def test_every_relative_link_and_named_file_exists(doc):
    """The README and docs point at each other, at RESULTS.md and at the code; a moved file breaks no link."""
    text = doc.read_text()
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t]
    missing = [t for t in targets if t and not (doc.parent / t).exists()]
    # repository paths named in code spans (`himr_pipe/scheme.py`, `benchmarks/bench_leak.py`), read from the top
    path = r"(?<![\w/.~-])((?:himr_pipe|kernels|train|docs|benchmarks|tests)/[\w./-]+\.\w+)"
    named = {s for code in code_of(text) for s in re.findall(path, code)}
    missing += sorted(p for p in named if not (TOP / p).exists())
    assert missing == []
