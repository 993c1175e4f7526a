"""Contract types of our own for import-linter (registered in pyproject.toml's [tool.importlinter]).

``acyclic_modules``: no import cycle between any two modules of the root packages, each cycle shown
whole with its import lines. The built-in ``acyclic_siblings`` checks each package's children
against each other, so a cycle through a package's own ``__init__`` (``tasks.models`` imports
``tasks.platform.models.jobs``, which imports ``tasks.models``) is inside one sibling and goes unseen there.
"""

from __future__ import annotations

from collections import deque

from grimp import ImportGraph
from importlinter.application import contract_utils, output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


class AcyclicModulesContract(Contract):
    type_name = "acyclic_modules"

    ignore_imports = fields.SetField(subfield=fields.ImportExpressionField(), required=False)

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        removal = contract_utils.remove_ignored_imports_and_report(
            graph=graph,
            ignore_imports=self.ignore_imports,  # type: ignore[arg-type]
            unmatched_alerting=contract_utils.AlertLevel.ERROR,
        )
        imports = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
        cycles = [
            (
                sorted(component),
                [(a, b, _lines(graph, a, b)) for a, b in _shortest_cycle(imports, component)],
            )
            for component in _cycles(imports)
        ]
        return ContractCheck(
            kept=not cycles,
            warnings=list(removal.warnings),
            ignored_import_count=removal.ignored_import_count,
            metadata={"cycles": cycles},
        )

    def render_broken_contract(self, check: ContractCheck) -> None:
        for component, cycle in check.metadata["cycles"]:
            output.print_error(f"{len(component)} modules import each other in a circle: {', '.join(component)}")
            output.print_error("One cycle among them:", bold=False)
            for importer, imported, lines in cycle:
                output.print_error(f"  {importer} -> {imported} ({lines})", bold=False)
            output.new_line()


def _cycles(imports: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(imports):
        if root in index:
            continue
        work = [(root, iter(sorted(imports[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(imports[successor]))))
                    break
                if successor in on_stack:
                    low[module] = min(low[module], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[module])
                if low[module] == index[module]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        components.append(component)
    return sorted(components, key=min)


def _shortest_cycle(imports: dict[str, set[str]], component: set[str]) -> list[tuple[str, str]]:
    """One shortest cycle through the component's first module, as (importer, imported) pairs."""
    start = min(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for successor in sorted(imports[module] & component):
            if successor == start:
                path = [(module, start)]
                while module != start:
                    path.append((came_from[module], module))
                    module = came_from[module]
                return path[::-1]
            if successor not in came_from:
                came_from[successor] = module
                queue.append(successor)
    raise AssertionError(f"no cycle through {start}")  # a component of two or more always has one


def _lines(graph: ImportGraph, importer: str, imported: str) -> str:
    details = graph.get_import_details(importer=importer, imported=imported)
    return ", ".join(f"l.{detail['line_number']}" for detail in details) or "l.?"
