"""Flat copies of project modules, for folders that must work where nothing of this project is installed.

A metric folder on the Hub is loaded with `evaluate.load(folder)`, which copies the module script into a package of
its own together with the files the script imports relatively (`from .name import ...`), one level deep, and nothing
else; an Inference Endpoints handler or a Gradio Space puts its folder on `sys.path`. Neither can import
`modeling_expllm` or `dataset_builders`. `write_bundle` writes beside such a script one file per project module it
needs, `expllm_<last name>.py`, following every project import (absolute or relative, at the top or inside a
function) until the set is closed, each import rewritten to the flat sibling:

    from modeling_expllm.vocabulary import COT_SECTIONS  ->  from .expllm_vocabulary import COT_SECTIONS  (relative)
                                                         ->  from expllm_vocabulary import COT_SECTIONS   (sys.path)

The project keeps one source of truth: the copies are generated, say so in their first line, and a test checks that
the committed ones equal a fresh generation (`python -m model_card.bundle --check`; without `--check` it rewrites
them). Data files travel as Python too, since evaluate copies only .py files: a module that reads its package's files
declares `EMBEDDED_DATA_FILES = {}` right after its imports and reads through one function that prefers those texts
(`dataset_builders.exp_cot.prompting.read_data_file`); in a bundle that line becomes an import from the generated
`expllm_resources.py`, which holds every data file of the package. The output goes through ruff (isort, format), so
the copies are as clean as their sources.
"""

import argparse
import ast
import filecmp
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("modeling_expllm", "dataset_builders", "expllm_analysis", "training")
COMMAND = "python -m model_card.bundle"
EMBEDDED_NAME = "EMBEDDED_DATA_FILES"
RESOURCES_NAME = "resources"  # the flat name of the embedded data files, after the prefix
HEADER = "# Generated from {source} by `{command}`: do not edit."

# The committed bundles: metric folder -> the project modules its script imports (each of the bundle's files is also
# imported by the script, since evaluate copies only what the script itself imports).
METRIC_BUNDLES = {
    "evaluate/exp_cot_score": ("dataset_builders.exp_cot.judges", "modeling_expllm.vocabulary"),
    "evaluate/fer_accuracy": ("dataset_builders.exp_cot.cot_text", "modeling_expllm.vocabulary"),
}

_DATA_SKIPPED = {"__pycache__"}
_STRING_PIECE = 88  # characters of a data file per string literal, so that no generated line passes 119
_FROM_HEAD = re.compile(r"from\s+\S+\s+import\b")


def is_project_module(name):
    return name.split(".")[0] in PROJECT_PACKAGES


def module_file(name):
    """The source file of a project module: `a/b/c.py`, or `a/b/c/__init__.py` for a package; None when neither."""
    base = REPO_ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@dataclass
class _Module:
    name: str
    file: Path
    source: str
    tree: ast.Module

    @property
    def package(self):
        return self.name if self.file.name == "__init__.py" else self.name.rpartition(".")[0]

    def where(self, node):
        return f"{self.file.relative_to(REPO_ROOT)}:{node.lineno}"


def _read(name):
    file = module_file(name)
    if file is None:
        raise ValueError(f"{name} is not a module of this project (no {name.replace('.', '/')}.py under {REPO_ROOT})")
    source = file.read_text(encoding="utf-8")
    return _Module(name, file, source, ast.parse(source, filename=str(file)))


def _absolute(module, node):
    """The absolute module name an `ImportFrom` node imports from."""
    if not node.level:
        return node.module
    parts = module.package.split(".")
    if node.level - 1 >= len(parts):
        raise ValueError(f"{module.where(node)}: the relative import goes above the top-level package")
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def _imported_modules(module):
    """(node, [(project module, how)]) of every import statement of `module` that names a project module, where `how`
    is "names" (`from M import x`: M itself is needed) or an alias (`from P import M`, `import P.M as m`)."""
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            if not is_project_module(base):
                continue
            if any(alias.name == "*" for alias in node.names):
                raise ValueError(f"{module.where(node)}: `from {base} import *` cannot be bundled; name what it uses")
            targets = []
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if module_file(submodule) is not None:
                    targets.append((submodule, alias))
                else:
                    targets.append((base, "names"))
            found.append((node, targets))
        elif isinstance(node, ast.Import):
            targets = []
            for alias in node.names:
                if not is_project_module(alias.name):
                    continue
                if "." in alias.name and alias.asname is None:
                    raise ValueError(
                        f"{module.where(node)}: `import {alias.name}` binds the package, which a flat copy has not; "
                        f"write `from {alias.name.rpartition('.')[0]} import {alias.name.rpartition('.')[2]}`"
                    )
                targets.append((alias.name, alias))
            if targets:
                found.append((node, targets))
    return found


def _embedded_placeholder(module):
    """The top-level `EMBEDDED_DATA_FILES = {}` statement of a module that reads its package's data files, or None."""
    for node in module.tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == EMBEDDED_NAME for target in node.targets
        ):
            if len(node.targets) != 1 or not (isinstance(node.value, ast.Dict) and not node.value.keys):
                raise ValueError(f"{module.where(node)}: {EMBEDDED_NAME} must be assigned `{{}}` alone, to be bundled")
            return node
    return None


def collect(modules):
    """{module name: _Module} of `modules` and every project module they import, transitively."""
    found, pending = {}, list(modules)
    while pending:
        name = pending.pop()
        if name in found:
            continue
        if not is_project_module(name):
            raise ValueError(f"{name} is not in a project package {PROJECT_PACKAGES}")
        found[name] = module = _read(name)
        for _, targets in _imported_modules(module):
            pending.extend(target for target, _ in targets)
    return found


def flat_names(modules, prefix):
    """{module name: flat module name}; a clear error when two modules would get the same file."""
    names = {}
    for name in sorted(modules):
        flat = prefix + name.rsplit(".", 1)[-1]
        clash = [other for other, taken in names.items() if taken == flat]
        if clash or flat == prefix + RESOURCES_NAME:
            raise ValueError(
                f"{name} and {clash[0] if clash else 'the embedded data files'} would both be written to {flat}.py; "
                "bundle them in separate folders or rename one"
            )
        names[name] = flat
    return names


def _offset(line_starts, lines, lineno, col_offset):
    """The character offset of an AST position (its column counts UTF-8 bytes)."""
    return line_starts[lineno - 1] + len(lines[lineno - 1].encode("utf-8")[:col_offset].decode("utf-8"))


def _import_line(flat, alias_name, relative):
    return f"from . import {flat} as {alias_name}" if relative else f"import {flat} as {alias_name}"


def _rewritten_import(module, node, targets, flat, relative):
    """The text that replaces one import statement: the project parts pointed at the flat siblings."""
    segment = ast.get_source_segment(module.source, node)
    if isinstance(node, ast.ImportFrom) and all(how == "names" for _, how in targets):
        head = _FROM_HEAD.match(segment)
        if head is None:
            raise ValueError(f"{module.where(node)}: cannot read the import statement {segment!r}")
        # Only the module is replaced: the imported names keep their layout and comments.
        return f"from {'.' if relative else ''}{flat[targets[0][0]]} import" + segment[head.end() :]
    statements = []
    if isinstance(node, ast.ImportFrom):
        names = [alias for (_, how), alias in zip(targets, node.names) if how == "names"]
        if names:
            listed = ", ".join(a.name if a.asname is None else f"{a.name} as {a.asname}" for a in names)
            statements.append(f"from {'.' if relative else ''}{flat[_absolute(module, node)]} import {listed}")
        for target, how in targets:
            if how != "names":
                statements.append(_import_line(flat[target], how.asname or how.name, relative))
    else:
        project = {alias.name: alias for _, alias in targets}
        for alias in node.names:
            if alias.name not in project:
                statements.append(f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else ""))
            else:
                statements.append(_import_line(flat[alias.name], alias.asname or alias.name, relative))
    indent = " " * node.col_offset  # an import inside a function keeps its block's indentation
    return f"\n{indent}".join(statements)


def _rewrite(module, flat, relative, resources):
    """The flat copy of one module's source, before ruff."""
    lines = module.source.splitlines(keepends=True)
    line_starts = [0]
    for line in lines:
        line_starts.append(line_starts[-1] + len(line))
    edits = []
    for node, targets in _imported_modules(module):
        edits.append((node, _rewritten_import(module, node, targets, flat, relative)))
    placeholder = _embedded_placeholder(module)
    if placeholder is not None:
        edits.append((placeholder, f"from {'.' if relative else ''}{resources} import {EMBEDDED_NAME}"))
    text = module.source
    for node, replacement in sorted(edits, key=lambda edit: (edit[0].lineno, edit[0].col_offset), reverse=True):
        start = _offset(line_starts, lines, node.lineno, node.col_offset)
        end = _offset(line_starts, lines, node.end_lineno, node.end_col_offset)
        text = text[:start] + replacement + text[end:]
    source = module.file.relative_to(REPO_ROOT).as_posix()
    return HEADER.format(source=source, command=COMMAND) + "\n" + text


def data_files(package):
    """{path relative to the package folder: text} of every file of a project package that is not Python."""
    folder = module_file(package).parent
    files = {}
    for file in sorted(folder.rglob("*")):
        relative = file.relative_to(folder)
        if file.is_file() and file.suffix not in (".py", ".pyc") and not _DATA_SKIPPED & set(relative.parts):
            files[relative.as_posix()] = file.read_text(encoding="utf-8")
    return files


def _string_literal(text):
    """A text as adjacent string literals, one line (or piece of a long line) each: no generated line is too long."""
    pieces = []
    for line in text.splitlines(keepends=True):
        while len(line) > _STRING_PIECE:
            cut = line.rfind(" ", 0, _STRING_PIECE) + 1 or _STRING_PIECE  # after a space, where there is one
            pieces.append(line[:cut])
            line = line[cut:]
        pieces.append(line)
    body = "\n".join(f"        {piece!r}" for piece in pieces) or '        ""'
    return f"(\n{body}\n    )"


def _resources_source(package, reader):
    folder = module_file(package).parent.relative_to(REPO_ROOT).as_posix()
    header = HEADER.format(source=f"the data files of {folder}/", command=COMMAND)
    docstring = (
        f"The data files of `{package}`: everything in its folder that is not Python, for `read_data_file` in\n"
        f"{reader}.py (a folder that evaluate copies holds .py files only)."
    )
    entries = "\n".join(f"    {path!r}: {_string_literal(text)}," for path, text in data_files(package).items())
    return f'{header}\n"""{docstring}"""\n\n{EMBEDDED_NAME} = {{\n{entries}\n}}\n'


def _ruff(files):
    """Sort the imports (the rewritten ones change sections) and format, with the project's settings."""
    config = ["--config", str(REPO_ROOT / "pyproject.toml")]
    paths = [str(file) for file in files]
    for command in (["check", "--fix", "--select", "I", "--quiet", *config], ["format", "--quiet", *config]):
        result = subprocess.run([sys.executable, "-m", "ruff", *command, *paths], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"ruff {command[0]} failed on the bundle:\n{result.stdout}{result.stderr}")


def write_bundle(modules, folder, *, relative, prefix="expllm_"):
    """Write flat copies of the project `modules` (dotted names) and of every project module they import into
    `folder`, each `<prefix><last name>.py`. relative=True: the copies import each other as `from .<flat> import`, for
    a package (evaluate's loading of a module script); False: as `from <flat> import`, for a folder on sys.path.
    A module package whose data files it reads (see the module docstring) adds `<prefix>resources.py`. Returns the
    paths written."""
    found = collect(modules)
    flat = flat_names(found, prefix)
    resources = prefix + RESOURCES_NAME
    readers = [name for name, module in found.items() if _embedded_placeholder(module) is not None]
    if len({found[name].package for name in readers}) > 1:
        raise ValueError(f"{readers} embed the data files of different packages; one bundle holds one package's")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in sorted(found):
        path = folder / f"{flat[name]}.py"
        path.write_text(_rewrite(found[name], flat, relative, resources), encoding="utf-8")
        written.append(path)
    if readers:
        path = folder / f"{resources}.py"
        path.write_text(_resources_source(found[readers[0]].package, flat[readers[0]]), encoding="utf-8")
        written.append(path)
    _ruff(written)
    return written


def is_generated(path):
    """Whether a file starts with the generator's header line."""
    with open(path, encoding="utf-8") as file:
        first = file.readline()
    return first.startswith("# Generated from ") and f"`{COMMAND}`" in first


def stale_files(folder, written):
    """Generated files in `folder` that the latest generation did not write (a module the bundle no longer needs)."""
    names = {path.name for path in written}
    return sorted(path for path in Path(folder).glob("*.py") if path.name not in names and is_generated(path))


def check_metric_bundles():
    """The differences between the committed metric bundles and a fresh generation, as lines; empty when current."""
    problems = []
    for folder, modules in METRIC_BUNDLES.items():
        committed = REPO_ROOT / folder
        with tempfile.TemporaryDirectory() as scratch:
            fresh = write_bundle(modules, Path(scratch) / Path(folder).name, relative=True)
            for path in fresh:
                target = committed / path.name
                if not target.is_file():
                    problems.append(f"{folder}/{path.name} is missing")
                elif not filecmp.cmp(path, target, shallow=False):
                    problems.append(f"{folder}/{path.name} differs from its sources")
            problems += [f"{folder}/{path.name} is no longer generated" for path in stale_files(committed, fresh)]
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the committed bundles are current")
    args = parser.parse_args(argv)
    if args.check:
        problems = check_metric_bundles()
        for problem in problems:
            print(problem)
        if problems:
            print(f"the metric bundles are out of date: run `{COMMAND}`")
        return 1 if problems else 0
    for folder, modules in METRIC_BUNDLES.items():
        written = write_bundle(modules, REPO_ROOT / folder, relative=True)
        for path in stale_files(REPO_ROOT / folder, written):
            path.unlink()
            print(f"removed {path.relative_to(REPO_ROOT)}")
        print(f"{folder}: {', '.join(path.name for path in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
