"""The package's shape: imports run one way (no cycle, function-local imports included),
the torch-free modules stay torch-free, and every default has one home that the library,
the CLI, the web UI and recipes all read."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "pangudraw"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports anywhere in its body
    (at the top, in functions, under ``if TYPE_CHECKING``)."""
    files = sorted(PACKAGE.rglob("*.py"))
    names = {module_name(f) for f in files}
    graph = {}
    for file in files:
        here = module_name(file)
        package = here.split(".") if file.name == "__init__.py" else here.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package[: len(package) - (node.level - 1)]
                    base = ".".join(parent + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in names:  # a name inside a module
                    target = target.rpartition(".")[0]
                if target and target != here:
                    found.add(target)
        graph[here] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_requests_and_recipes_are_checked_without_torch():
    """The CLI refuses bad input before torch loads: these modules must not import it."""
    modules = "pangudraw.families, pangudraw.render, pangudraw.recipes, pangudraw.options"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


# ------------------------------------------------------------------ one home per default


def test_defaults_agree_across_library_cli_ui_and_recipes(tmp_path):
    from click.testing import CliRunner

    from pangudraw.cli.main import cli
    from pangudraw.options import GENERATION
    from pangudraw.pipelines import generate
    from pangudraw.recipes import ExpertSpec, Recipe, load_recipe
    from pangudraw.render import GenerateRequest

    # the library
    signature = inspect.signature(generate).parameters
    assert signature["num_inference_steps"].default == GENERATION["steps"]
    assert signature["guidance_scale"].default == GENERATION["guidance_scale"]
    # None: the model's own where it has one (Wan's UniPC, Wan2.2's boundary), else these
    assert signature["sampler"].default is None and signature["t_split"].default is None
    from pangudraw.coop import own_sampler
    from pangudraw.options import DEFAULT_SPLIT

    assert own_sampler({}) == GENERATION["sampler"] and GENERATION["t_split"] == DEFAULT_SPLIT
    assert signature["bridge"].default == GENERATION["bridge"]
    filled = GenerateRequest(prompts=["x"], seed=0).check()
    for key in ("steps", "guidance_scale", "sampler", "t_split", "bridge", "handoff"):
        assert getattr(filled, key) == GENERATION[key], key
    # recipes, as a dataclass and as a file that gives nothing
    recipe, spec = Recipe(experts=[]), ExpertSpec("a", "zoo:full", "x")
    assert (recipe.steps, recipe.sampler, recipe.noise, recipe.bridge) == tuple(
        GENERATION[k] for k in ("steps", "sampler", "noise", "bridge")
    )
    assert spec.guidance == GENERATION["guidance_scale"]
    (tmp_path / "r.toml").write_text('prompt = "x"\n[[experts]]\nmodel = "zoo:full"\n')
    parsed = load_recipe(tmp_path / "r.toml")
    assert (parsed.steps, parsed.sampler, parsed.experts[0].guidance) == (
        GENERATION["steps"],
        GENERATION["sampler"],
        GENERATION["guidance_scale"],
    )
    # the CLI says them in its --help
    text = " ".join(CliRunner().invoke(cli, ["generate", "--help"]).output.split())
    assert f"[default: {GENERATION['steps']};" in text
    assert f"[default: {GENERATION['guidance_scale']:g};" in text
    assert f"[default: {GENERATION['t_split']}]" in text
    assert f"[default: {GENERATION['sampler']};" in text
    assert f"[default: {GENERATION['bridge']}]" in text


def test_the_web_ui_opens_on_the_same_defaults(tmp_path):
    pytest.importorskip("gradio")
    from pangudraw.options import GENERATION
    from pangudraw.ui.app import App
    from pangudraw.ui.layout import build
    from pangudraw.ui.served import Served

    served = Served.find(tmp_path, ())
    values = {}
    for block in build(App(served)).blocks.values():
        label = getattr(block, "label", None)
        if label in ("Steps", "Guidance", "Split (t)", "Sampler", "Noise"):
            values.setdefault(label, set()).add(block.value)
    assert values == {
        "Steps": {GENERATION["steps"]},  # Generate and Coop
        "Guidance": {GENERATION["guidance_scale"]},
        "Split (t)": {GENERATION["t_split"]},
        "Sampler": {GENERATION["sampler"]},
        "Noise": {GENERATION["noise"]},
    }
