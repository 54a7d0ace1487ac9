"""The package's shape (DESIGN.md): no import cycle between modules, and the arrows between subpackages point one
way: rules know models and nothing of Lightning, nothing imports runs/ but the entry points."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "src" / "layerwise"
ENTRY_POINTS = {"layerwise.__main__", "layerwise.preflight", "layerwise.cli"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the layerwise modules it imports, at any depth of its code (function-level imports count)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("layerwise"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("layerwise")}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _imports_anything(name: str, graph: dict, seen: set | None = None) -> set[str]:
    seen = set() if seen is None else seen
    for dep in graph[name]:
        if dep not in seen:
            seen.add(dep)
            _imports_anything(dep, graph, seen)
    return seen


def test_no_module_imports_itself_through_others():
    graph = import_graph()
    cycles = sorted(name for name in graph if name in _imports_anything(name, graph))
    assert not cycles, f"import cycles through {cycles}"


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else "(top)"


def test_subpackages_import_downwards_only():
    graph = import_graph()
    arrows = {(_package(a), _package(b)) for a, deps in graph.items() for b in deps if _package(a) != _package(b)}
    into_runs = {a for a, deps in graph.items() for b in deps if _package(b) == "runs" and _package(a) != "runs"}
    assert into_runs <= ENTRY_POINTS, f"only the entry points import runs/: {into_runs - ENTRY_POINTS}"
    assert not {b for a, b in arrows if a == "rules"} - {"models", "(top)"}, "rules know models and nothing else"
    assert not {b for a, b in arrows if a == "models"} - {"(top)"}
    assert ("core", "runs") not in arrows and ("parallel", "runs") not in arrows and ("config", "runs") not in arrows
    packages = {_package(m) for m in graph}
    reverse = {(a, b) for a, b in arrows if (b, a) in arrows and "(top)" not in (a, b)}
    assert not reverse, f"subpackages importing each other: {sorted(reverse)}"
    assert {"core", "rules", "models", "data", "parallel", "runs", "config", "diagnostics", "reporting"} <= packages


def test_rule_code_does_not_import_lightning():
    for path in (PACKAGE / "rules").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {n for n in names if n.split(".")[0] in ("lightning", "pytorch_lightning")}, path.name


def test_every_subpackage_says_what_lives_there():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init.parent.name}/__init__.py has no docstring"


def test_the_generated_option_defaults_are_the_dataclasses():
    """config/defaults.yaml lets --help and --cfg job compose without importing torch; it must say what the
    options dataclasses say."""
    from omegaconf import OmegaConf

    from layerwise.config.source import SNAPSHOT, _snapshot, build_snapshot

    saved = OmegaConf.to_container(OmegaConf.load(SNAPSHOT))
    assert saved == build_snapshot(), f"{SNAPSHOT.name} is stale: run python -m layerwise.config.source"
    assert _snapshot() == saved  # the fast reader sees what OmegaConf sees


def test_help_and_cfg_job_compose_without_torch():
    import subprocess
    import sys

    for args in (["--help"], ["--cfg", "job", "method=dfa", "model=resnet20", "data=svhn"]):
        res = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "main.py"), *args], capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
        assert res.returncode == 0, res.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import")}
        assert not {"torch", "lightning", "torchvision", "wandb"} & imported, args


HEAVY = {"torch", "lightning", "torchvision", "wandb"}


def test_a_config_error_returns_before_torch_lightning_or_wandb_are_imported(tmp_path):
    """DESIGN.md's CLI contract: a config error returns before torch's import (seconds). A rule's option and the
    zero-derivative refusal (which built the rule before), each through main.py (the CLI's path: runs/gate.py);
    what is timed is scripts/benchmark.py --cli's."""
    import subprocess
    import sys

    probe = ("import sys, runpy\n"
             "sys.argv = ['main.py', *sys.argv[1:]]\n"
             "try:\n"
             "    runpy.run_path(%r, run_name='__main__')\n"
             "finally:\n"
             "    print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in %r), file=sys.stderr)\n"
             % (str(ROOT / "main.py"), HEAVY))
    cases = {("method=dgl", "method.aux.type=bogus"): "method.aux.type='bogus' is not known",
             ("model.activation=sign", "method=bp"): "has zero derivative, so method=bp"}
    for args, line in cases.items():
        res = subprocess.run([sys.executable, "-c", probe, *args, f"paths.output_root={tmp_path}"], capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
        assert res.returncode == 2, res.stderr[-2000:]
        assert line in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
        assert "HEAVY []" in res.stderr, res.stderr[-500:]
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "a single run with a bad config writes nothing"


def test_the_options_registries_import_no_torch():
    """The schema's lookups for layerwise's own rules, models and datasets (and --help's lists) are torch-free."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from layerwise.rules import options_class, rule_names\n"
            "from layerwise.models import MODEL_OPTIONS, model_options\n"
            "from layerwise.data import DATA_OPTIONS, DATASETS, data_options\n"
            "for n in rule_names(): options_class({'name': n})\n"
            "for a in MODEL_OPTIONS: model_options({'arch': a})\n"
            "for d in DATASETS: data_options({'name': d})\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in %r))\n" % HEAVY)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr[-2000:]


def test_the_torch_free_tables_match_the_code_they_stand_for():
    """What the config check reads without torch (option classes, names) is what the rules, networks and loaders
    use (Lightning's precisions and Trainer arguments: config/trainer_args.json, checked fresh in test_multinode)."""
    from layerwise.data import DATASETS, LOADERS
    from layerwise.models import ACTIVATION_NAMES, ACTIVATIONS
    from layerwise.rules import options_class, package_rules, rule_class

    assert sorted(DATASETS) == sorted(LOADERS)
    assert tuple(ACTIVATIONS) == ACTIVATION_NAMES
    for name in package_rules():
        assert rule_class(name).Options is options_class({"name": name}), name


def test_an_entry_point_rules_declared_options_are_read_without_importing_the_rule(monkeypatch):
    """[project.entry-points."layerwise.rule_options"] (docs/extending.md): the options of an installed package's
    rule, from a module of their own; the rule's module (here one that does not exist) is not imported."""
    from importlib.metadata import EntryPoint

    import layerwise.rules as rules
    from layerwise.rules.options.dgl import DglOptions

    points = {rules.ENTRY_POINT_GROUP: [EntryPoint("lab_rule", "no_such_lab.rules:Rule", rules.ENTRY_POINT_GROUP)],
              rules.OPTIONS_ENTRY_POINT_GROUP: [EntryPoint("lab_rule", "layerwise.rules.options.dgl:DglOptions",
                                                           rules.OPTIONS_ENTRY_POINT_GROUP)]}
    monkeypatch.setattr(rules, "entry_points", lambda group: points.get(group, []))
    assert rules.options_class({"name": "lab_rule"}) is DglOptions
