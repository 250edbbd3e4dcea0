"""The house: a restructure changes no output byte, and the package's imports have no circles.

The pinned digests are those of a seeded run before the restructure of issue 17 (the same seed gives the same
bytes, so any change to them is a change of behaviour). They hold for the pinned dependencies (pyproject.toml:
the JPEG codec and the decoder decide the bytes); a deliberate change of output re-pins them in its own commit.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import encrypt, manifest, shard_bytes

PINNED = {
    "default": {"shards": {
        "train-000000.tar": "64d90c8933261be09a6ca839038574f4f0ebf7fb622e6e91f6449afe89a8f2ef",
        "train-000001.tar": "50adde34f36aaf37a9a8a4bbdcd452d00151f94a084186ecf82f6d5b32527b00",
        "train-000002.tar": "d5809169500d1a08e3f37ccfb9a3d6da7349b72bdd9c3dd481dcbab79762bd9d"},
        "manifest": "f5e9c017b50719e90e56df7d96292ab9aecd08bb1daee7de3b9ad24174f1d9e2"},
    "rs-png": {"shards": {
        "train-000000.tar": "f9a25bc8037066989f3b26a784f9a9a83b61ff15b30d9bcac93ac8408c71bc33",
        "train-000001.tar": "ededf20be25b591ecf8d9ff5c17ca9f419ebbc2ee0b3c261ad35835031327e94",
        "train-000002.tar": "e2bc0f91871b4fb432b52de97bdeded0dacf6bcd39847075b7fcee655066eb54"},
        "manifest": "b4eb3ce07de4f8309f0a614d6b623944db6117120881abcf49b93988ca1e731c"},
}
PINNED_DETECTION = {
    "shards": {"train-000000.tar": "ff83c3649104d546409ef792f0f581e0c6d5f0f65e93088549e6f58ff6337c33",
               "train-000001.tar": "115cc33a139b040f7d202cb60df07741a4a90cbdaeec4790088f76697811b3c7",
               "train-000002.tar": "dd27013c5071062e874a1c286c2403c4e2901b9ddf6425ada7357255ad1e55c0"},
    "manifest": "0b141dbabc92f904c4dd04a459dab711df0ea4aa838ca88d9f27651fd19a4084",
    "ground_truth": {"ground-truth-train.json": "64003cb646fc285a2e40b7333a5aa58bbaf951d7187b7c56446f7de733e8bf25"}}
ARGS = {"default": (), "rs-png": ("--scheme", "rs", "--format", "png", "--gap", "1", "--drop", "0.25")}
# detection (issue 17's tasks as objects): a COCO sample, with views (boxes move with the pixels) and the
# sanitised ground truth, whose bytes are pinned with the shards
DET_ARGS = ("--size", "128", "--views", "2")


def digests(out) -> dict:
    from pathlib import Path

    m = manifest(out)
    m.pop("tool", None)
    # issue 19 added the manifest's "model" (the timm family that fits the shards, tests/test_user_path.py):
    # a record derived from the scheme alone, so the pins hold for everything else the manifest says
    assert m.pop("model")["family"] in ("mivit_shuffle_flip", "pevit", "pevit_flip", "peyolos", "peyolos_none",
                                        "mivit", "mivit_shuffle", "vit")
    d = {"shards": {k: hashlib.sha256(v).hexdigest() for k, v in shard_bytes(out).items()},
         "manifest": hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest()}
    gt = sorted(Path(out).glob("ground-truth-*.json"))
    if gt:
        d["ground_truth"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in gt}
    return d


@pytest.mark.parametrize("name", list(ARGS))
def test_a_seeded_run_writes_the_pinned_bytes(sample_src, tmp_path, name):
    out = tmp_path / name
    encrypt(sample_src, out, "--seed", "17", "--shard-size", "7", *ARGS[name])
    assert digests(out) == PINNED[name]


def test_a_request_in_process_writes_the_commands_bytes(sample_src, tmp_path):
    """The trade-off study and the benchmarks encrypt through EncryptRequest, not the command line: the same
    request resolves to the same job, and so to the command's pinned bytes."""
    from himr_pipe.pipeline import encrypt_shards
    from himr_pipe.request import EncryptRequest

    out = tmp_path / "rs-png"
    req = EncryptRequest(scheme="rs", fmt="png", gap=1, drop=0.25, seed=17, shard_size=7, workers=0,
                         progress=False, audit=False, state_dir=f"{out}.state")
    cfg, opts = req.build(str(sample_src))
    assert encrypt_shards(str(sample_src), str(out), cfg, 17, opts).exit_code == 0
    assert digests(out) == PINNED["rs-png"]


def _record(path: str):
    import importlib

    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


# command -> (the record that states its defaults once, its fields for callers only (no option), its required ones)
DEFAULTS = {"encrypt-shards": ("himr_pipe.request.EncryptRequest", (), ("src", "out")),
            "train": ("himr_pipe.train.config.TrainConfig", ("min_lr", "aug_config"), ("shards", "out")),
            "tradeoff": ("himr_pipe.tradeoff.TradeoffRequest", ("recipe", "val_share"), ("src", "samples"))}


@pytest.mark.parametrize("command", list(DEFAULTS))
def test_each_commands_defaults_are_its_records(command):
    """A command's option defaults are read from its record (stated once), option for option: encrypt-shards'
    from EncryptRequest, train's from TrainConfig, tradeoff's from TradeoffRequest."""
    from dataclasses import MISSING, fields

    from himr_pipe.cli import main

    path, callers_only, required = DEFAULTS[command]
    cmd, record = main.commands[command], _record(path)
    stated = {f.name: f.default for f in fields(record) if f.name not in callers_only}
    # encrypt-shards' SRC and OUT are its function's arguments, not the request's fields
    params = {p.name: p.default for p in cmd.params if p.name in stated or command != "encrypt-shards"}
    assert set(params) == set(stated)
    assert {p.name for p in cmd.params if p.required} == set(required)
    assert all(stated[k] is MISSING for k in required if k in stated)
    assert {k: v for k, v in params.items() if k not in required} == {
        k: v for k, v in stated.items() if k not in required}


def test_no_test_hooks_in_the_product():
    """No command has a hidden (tests-only) option, and no product module reads a failpoint: the tests inject
    their faults through WorkerSpec.hooks and train's hooks (tests/faults.py)."""
    from pathlib import Path

    from himr_pipe.cli import main

    hidden = [f"{name} {p.name}" for name, cmd in main.commands.items() for p in cmd.params
              if getattr(p, "hidden", False)]
    assert hidden == []
    top = Path(__file__).resolve().parent.parent
    sources = [f for d in ("himr_pipe", "train", "kernels") for f in (top / d).rglob("*.py")]
    assert len(sources) > 40 and [f for f in sources if "failpoint" in f.read_text().lower()] == []


def test_a_seeded_detection_run_writes_the_pinned_bytes(tmp_path):
    from himr_pipe.sample_data import make_detection_sample

    make_detection_sample(tmp_path / "coco", train_images=5, val_images=0, seed=3)
    out = tmp_path / "det"
    encrypt(tmp_path / "coco" / "train2017", out, "--seed", "17", "--shard-size", "4", *DET_ARGS)
    assert digests(out) == PINNED_DETECTION


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at any depth of its code: a function's import counts too), read
    from the source with ast. kernels/ and train/ are installed as himr_pipe.kernels and himr_pipe.train."""
    import ast
    from pathlib import Path

    top = Path(__file__).resolve().parent.parent
    roots = {"himr_pipe": top / "himr_pipe", "himr_pipe.kernels": top / "kernels", "himr_pipe.train": top / "train"}
    files = {}
    for pkg, root in roots.items():
        for p in root.rglob("*.py"):
            parts = p.relative_to(root).with_suffix("").parts
            name = ".".join((pkg, *parts))
            files[name.removesuffix(".__init__")] = p
    graph: dict[str, set[str]] = {m: set() for m in files}
    for name, p in files.items():
        here = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[:len(here.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                cands = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                cands = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in cands if t in files and t != name}
    return graph


def test_the_package_imports_have_no_circles():
    """No module reaches itself through imports (a plan both the job and the worker import, the temporary-name
    rule in storage alone, MI's display in geometry): the modules then sit on floors, each importing only below."""
    graph = import_graph()
    assert "himr_pipe.plan" in graph and "himr_pipe.kernels.reference" in graph and "himr_pipe.train.models" in graph
    # strongly connected components (Kosaraju): every component of more than one module is a circle
    order, seen = [], set()

    def visit(m, g, out):
        stack = [(m, iter(sorted(g[m])))]
        seen.add(m)
        while stack:
            node, it = stack[-1]
            nxt = next((t for t in it if t not in seen), None)
            if nxt is None:
                stack.pop()
                out.append(node)
            else:
                seen.add(nxt)
                stack.append((nxt, iter(sorted(g[nxt]))))

    for m in sorted(graph):
        if m not in seen:
            visit(m, graph, order)
    reverse = {m: {s for s in graph if m in graph[s]} for m in graph}
    seen, cycles = set(), []
    for m in reversed(order):
        if m not in seen:
            comp: list = []
            visit(m, reverse, comp)
            if len(comp) > 1:
                cycles.append(set(comp))
    assert cycles == []  # the last one went: the CLI and the trade-off study share himr_pipe.request


# The floors, top down: the commands; the orchestration; the audit and the trainers (side by side, neither
# imports the other); the library every stage shares (plan, job, worker, tasks, decoders, kernels, storage...).
FLOORS = [("app", ("himr_pipe.cli", "himr_pipe.tradeoff", "himr_pipe.__main__")), ("pipeline", ("himr_pipe.pipeline",)),
          ("audit", ("himr_pipe.audit",)), ("train", ("himr_pipe.train",))]


def floor_of(module: str) -> int:
    """The floor's number, 0 at the top; the audit and the trainers share one (2), the library is 3."""
    for i, (_, prefixes) in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return min(i, 2)
    return 3


def test_no_import_runs_back_up_a_floor():
    """The library never reaches into the audit, the trainers, the orchestration or the commands (decrypt once
    borrowed MI's display from the audit, the worker read the job's records); the audit and the trainers never
    reach into each other or up; only the commands and the pipeline stand above them."""
    graph = import_graph()
    up = sorted((m, t) for m, ts in graph.items() for t in ts if floor_of(t) < floor_of(m))
    across = sorted((m, t) for m, ts in graph.items() for t in ts
                    if floor_of(m) == floor_of(t) == 2 and m.split(".")[1] != t.split(".")[1])
    assert up == [] and across == []
    assert floor_of("himr_pipe.audit.report") == floor_of("himr_pipe.train.trainer") == 2
    assert floor_of("himr_pipe.tasks.detection") == floor_of("himr_pipe.kernels.reference") == 3


# sample-data's --task names which sample set to write (its kinds include shapes, which is no task of the pipeline;
# --kind rects is a detection sample)
TASK_NAME_TESTS_ALLOWED = {"himr_pipe.cli.samples": 5}


def name_comparisons(names: set, skip) -> dict[str, int]:
    """Module -> how many comparisons with one of ``names`` (a constant on either side of ==, !=, in, ...) its
    source holds, read with ast, for every module of the product but those ``skip(module)`` excuses."""
    import ast
    from pathlib import Path

    top = Path(__file__).resolve().parent.parent
    found = {}
    for pkg, root in {"himr_pipe": top / "himr_pipe", "himr_pipe.kernels": top / "kernels",
                      "himr_pipe.train": top / "train"}.items():
        for p in root.rglob("*.py"):
            name = ".".join((pkg, *p.relative_to(root).with_suffix("").parts))
            if skip(name):
                continue
            n = sum(1 for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.Compare)
                    for c in [node.left, *node.comparators]
                    if isinstance(c, ast.Constant) and c.value in names)
            if n:
                found[name] = n
    return found


def test_stages_ask_the_task_object_instead_of_testing_its_name():
    """Classification and detection differ only through their task objects (himr_pipe.tasks, train/tasks.py):
    no other module compares a task's name, and every pipeline task has a training recipe."""
    from himr_pipe.tasks import TASKS
    from himr_pipe.train.tasks import TRAININGS

    found = name_comparisons(set(TASKS), lambda m: m.startswith("himr_pipe.tasks") or m == "himr_pipe.train.tasks")
    assert found == TASK_NAME_TESTS_ALLOWED
    assert set(TRAININGS) == set(TASKS)
    for t in TASKS.values():  # the interface is whole: every task answers every question of the pipeline
        assert t.members("jpg") >= {"jpg", "json"}
        assert isinstance(t.new_counts(), dict)


def test_every_package_is_installed():
    """A package directory missing from pyproject's list works from an editable clone and is absent from a wheel:
    the list names every folder with an __init__.py under himr_pipe/, kernels/ and train/."""
    import tomllib
    from pathlib import Path

    top = Path(__file__).resolve().parent.parent
    cfg = tomllib.loads((top / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {pkg: top / d for pkg, d in cfg["package-dir"].items()}
    found = set()
    for pkg, root in dirs.items():
        for init in root.rglob("__init__.py"):
            parts = init.parent.relative_to(root).parts
            found.add(".".join((pkg, *parts)))
    assert found == set(cfg["packages"])


def test_stages_ask_the_scheme_definition_instead_of_testing_its_name():
    """What differs per scheme is asked of its definition (himr_pipe/schemes/): no other module compares a value
    with a scheme's name, so a new scheme is one module (tests/demo_scheme.py shows it)."""
    from himr_pipe.schemes import SCHEMES

    names = set(SCHEMES) | {d.kind for d in SCHEMES.values()}
    assert name_comparisons(names, lambda m: m.startswith("himr_pipe.schemes")) == {}


def floors() -> int:
    """The house's height: the longest chain of imports between its rooms, a room being a top-level module or a
    package of himr_pipe (himr_pipe.cli, .schemes, .sources, .train, .kernels, ...)."""
    from functools import lru_cache

    def room(m):
        return ".".join(m.split(".")[:2])

    graph = import_graph()
    rooms: dict[str, set] = {}
    for m, ts in graph.items():
        rooms.setdefault(room(m), set()).update(room(t) for t in ts if room(t) != room(m))

    @lru_cache(None)
    def height(r):
        return 1 + max((height(t) for t in rooms[r]), default=0)

    return max(height(r) for r in rooms)


def test_the_house_is_no_taller_than_its_floor_plan():
    """Eleven floors (twelve before issue 34): a module that imports a constant or a helper from a room far above
    its own lifts everything above it; move the constant to its user instead (docs/architecture.md)."""
    assert floors() <= 11


def test_every_command_error_is_one_line_and_its_exit_code(tmp_path, monkeypatch):
    """Errors derive from himr_pipe.errors.Refused (exit 2) or Failed (exit 1); the CLI maps them once, for every
    command: one line, no traceback."""
    from click.testing import CliRunner

    import himr_pipe.verify as verify
    from himr_pipe.cli import main
    from himr_pipe.errors import Failed, Refused
    from himr_pipe.manifest import ManifestError
    from himr_pipe.storage import StoreUnavailable

    for exc, code in ((ManifestError("OUT has no manifest.json"), 2), (StoreUnavailable("the store is down"), 1)):
        assert isinstance(exc, (Refused, Failed))

        def boom(*a, exc=exc, **k):
            raise exc

        monkeypatch.setattr(verify, "verify_out", boom)
        res = CliRunner().invoke(main, ["verify", str(tmp_path)])
        assert res.exit_code == code
        assert res.output.strip().splitlines() == [f"himr-pipe: error: {exc}"]
