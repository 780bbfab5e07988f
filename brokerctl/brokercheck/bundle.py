"""Join the check's modules into the one file the gate Job runs (`python brokercheck.py`).

The Job runs in the workers' image (Python, redis-py, kombu, Celery), which does not hold this
repository: the check reaches it as one file in a ConfigMap. The bundle is plain Python a
person can read in the rendered ConfigMap, and deterministic (the same sources give the same
bytes: the Job's name hashes them).

Modules are joined in MODULES order and each may import only from those before it. Imports
between them are dropped, since the bundle is one namespace; a name defined by two modules
would then silently replace the other's, so the bundler refuses that instead. The first
module's docstring is the bundle's (contract.HELP reads it as `__doc__`); the others' become
comments.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "brokerctl.brokercheck"
PACKAGE_DIR = Path(__file__).resolve().parent
SCRIPT_NAME = "brokercheck.py"
"""The bundle's file name, in the ConfigMap and on the Job's command line."""
MODULES = (
    "contract",
    "masking",
    "report",
    "config",
    "outputs",
    "options",
    "broker",
    "sentinel",
    "workers",
    "run",
    "cli",
)
HEADER = (
    "# brokercheck.py: the broker check as one file, for the check Job (python brokercheck.py).\n"
    "# Generated from brokerctl/brokercheck/*.py by brokerctl/brokercheck/bundle.py: edit those.\n"
)
ENTRY_POINT = '\n\nif __name__ == "__main__":\n    raise SystemExit(main())\n'


class BundleError(Exception):
    """The package cannot be joined into one file (an import order or a name clash)."""


def bundle(directory: Path = PACKAGE_DIR) -> str:
    """Return the one-file check: every module of MODULES, in order, as one namespace."""
    defined_by: dict[str, str] = {}
    pieces = []
    docstring = ""
    for position, name in enumerate(MODULES):
        source = (directory / f"{name}.py").read_text(encoding="utf-8")
        tree = ast.parse(source, filename=f"{name}.py")
        _claim_names(tree, name, defined_by)
        module_doc, text = _module_body(source, tree, name, position)
        if position == 0:
            docstring = module_doc
            pieces.append(f"# ---- {name}.py ----\n\n{text}")
        else:
            comment = "".join(f"# {line}".rstrip() + "\n" for line in module_doc.splitlines())
            pieces.append(f"# ---- {name}.py ----\n{comment}\n{text}")
    head = f'{HEADER}"""{docstring}"""\n\nfrom __future__ import annotations\n\n'
    return head + "\n\n".join(pieces) + ENTRY_POINT


def _module_body(source: str, tree: ast.Module, name: str, position: int) -> tuple[str, str]:
    """Return a module's docstring and its code without the docstring and package imports."""
    lines = source.splitlines(keepends=True)
    dropped: set[int] = set()
    docstring = ast.get_docstring(tree, clean=False) or ""
    first = tree.body[0] if tree.body else None
    if docstring and isinstance(first, ast.Expr):
        dropped.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom) or node.module is None:
            continue
        if node.module == "__future__" or node.module.startswith(f"{PACKAGE}."):
            _check_order(node.module, name, position)
            dropped.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    kept = "".join(line for number, line in enumerate(lines, 1) if number not in dropped)
    return docstring, kept.strip("\n") + "\n"


def _check_order(module: str, name: str, position: int) -> None:
    """Refuse an import of a module the bundle puts later (its names would not exist yet)."""
    if module == "__future__":
        return
    imported = module.removeprefix(f"{PACKAGE}.")
    if imported not in MODULES or MODULES.index(imported) >= position:
        msg = f"{name}.py imports {module}, which MODULES does not put before it"
        raise BundleError(msg)


def _claim_names(tree: ast.Module, name: str, defined_by: dict[str, str]) -> None:
    """Record the module's top-level definitions; refuse one another module already made."""
    for node in tree.body:
        for defined in _defined_names(node):
            owner = defined_by.setdefault(defined, name)
            if owner != name:
                msg = (
                    f"{defined} is defined in both {owner}.py and {name}.py: in the bundle the "
                    "second would replace the first; rename one"
                )
                raise BundleError(msg)


def _defined_names(node: ast.stmt) -> list[str]:
    """Names a top-level statement defines (functions, classes, assignments; not imports)."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AnnAssign):
        targets = [node.target]
    else:
        return []
    return [
        leaf.id for target in targets for leaf in ast.walk(target) if isinstance(leaf, ast.Name)
    ]


def write_bundle(directory: Path) -> Path:
    """Write the bundle into `directory` as brokercheck.py and return its path."""
    path = directory / SCRIPT_NAME
    path.write_text(bundle(), encoding="utf-8")
    return path
