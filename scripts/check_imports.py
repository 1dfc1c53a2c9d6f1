"""Check that the library follows the teaching order: a module imports only modules that earlier lessons export.

Every module of `detr_edu/` is generated from one lesson notebook (its header says which: `File to edit:
../nbs/NN_name.ipynb`). For each module this script collects every import of another `detr_edu` module - at the top,
inside functions, relative (`from .x import`) or absolute, and `importlib.import_module("detr_edu.x")` calls - and
fails when one names a module whose lesson number is not lower than the importer's, or when imports form a cycle.

    python scripts/check_imports.py            # exit 1 and one line per problem, or a summary table
"""
from __future__ import annotations
import ast, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = re.compile(r"File to edit: \.\./nbs/(\d+)_\w+\.ipynb")


def lesson_of(source: str) -> int | None:
    "The lesson number in an nbdev module header, or None for modules nbdev did not write (`__init__`, `_modidx`)."
    m = HEADER.search(source[:2000])
    return int(m.group(1)) if m else None


def imported_modules(source: str, package: str = "detr_edu") -> set[str]:
    "Names (without the package) of the `package` modules that `source` imports anywhere."
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith(package + ".")}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1 and mod: found.add(mod.split(".")[0])                  # from .x import y
            elif node.level == 1 or mod == package: found |= {a.name for a in node.names}   # from . import x
            elif mod.startswith(package + "."): found.add(mod.split(".")[1])          # from package.x import y
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and node.args[0].value.startswith(package + ".")):
            found.add(node.args[0].value.split(".")[1])
    return found


def check(lib: Path) -> tuple[list[str], dict[str, tuple[int, set[str]]]]:
    "Problems found in the package folder `lib`, and for each module its lesson and the modules it imports."
    modules = {}
    for path in sorted(lib.glob("*.py")):
        source = path.read_text()
        lesson = lesson_of(source)
        if lesson is not None: modules[path.stem] = (lesson, imported_modules(source, lib.name) - {path.stem})
    problems = []
    for name, (lesson, imports) in modules.items():
        for other in sorted(imports):
            if other not in modules:
                if (lib / f"{other}.py").exists() or (lib / other).is_dir(): continue     # not a lesson module
                problems.append(f"{name} (lesson {lesson:02d}) imports {other}, which is not a module of {lib.name}")
            elif modules[other][0] >= lesson:
                problems.append(f"{name} (lesson {lesson:02d}) imports {other} from lesson {modules[other][0]:02d}: "
                                f"a module may import only what earlier lessons export")
    state = {}
    def visit(name, stack):                              # depth-first search for cycles
        state[name] = "open"
        for other in sorted(modules[name][1] & set(modules)):
            if state.get(other) == "open":
                cycle = stack[stack.index(other):] + [other]
                problems.append("import cycle: " + " -> ".join(cycle))
            elif other not in state: visit(other, stack + [other])
        state[name] = "done"
    for name in modules:
        if name not in state: visit(name, [name])
    return problems, modules


def main(argv=None) -> int:
    lib = Path(argv[0]) if argv else ROOT / "detr_edu"
    problems, modules = check(lib)
    if problems:
        print("\n".join(problems)); return 1
    for name, (lesson, imports) in sorted(modules.items(), key=lambda kv: kv[1][0]):
        print(f"{lesson:02d} {name:18s} <- {', '.join(sorted(imports & set(modules))) or '-'}")
    print(f"imports follow the teaching order: {len(modules)} modules, no import of a later lesson, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
