"""``--graph FORMAT``: the selected tasks and their dependencies, for humans and other tools.

networkx holds the graph for export (its node-link JSON is a format other tools read); it is
imported only here, never on a build.
"""

from __future__ import annotations

import json
from typing import Any


def to_networkx(graph: Any, ids: list[str]) -> Any:
    import networkx as nx

    selected = set(ids)
    digraph = nx.DiGraph()
    for task_id in ids:
        task = graph.tasks[task_id]
        digraph.add_node(
            task_id,
            name=task.name,
            inputs=[graph.rel(p) for p in task.input_files],
            products=[graph.rel(p) for p in task.product_files],
            markers=sorted(task.markers),
        )
    for task_id in ids:
        values = {up: name for name, up in graph.value_deps[task_id].items()}
        for up in graph.upstream[task_id]:
            if up in selected:
                digraph.add_edge(up, task_id, kind="value" if up in values else "file or order",
                                 parameter=values.get(up, ""))
    return digraph


def render(graph: Any, ids: list[str], fmt: str) -> str:
    digraph = to_networkx(graph, ids)
    if fmt == "json":
        import networkx as nx

        return json.dumps(nx.node_link_data(digraph, edges="edges"), indent=2)
    if fmt == "dot":
        lines = ["digraph cpbuild {", "  rankdir=LR;", "  node [shape=box];"]
        lines += [f"  {json.dumps(n)} [label={json.dumps(d['name'])}];" for n, d in digraph.nodes(data=True)]
        lines += [
            f"  {json.dumps(a)} -> {json.dumps(b)}" + (" [style=dashed];" if d["kind"] != "value" else ";")
            for a, b, d in digraph.edges(data=True)
        ]
        return "\n".join([*lines, "}"])
    mermaid = _mermaid(digraph)
    if fmt == "mermaid":
        return mermaid
    return _HTML.replace("{graph}", mermaid)


def _mermaid(digraph: Any) -> str:
    index = {node: f"t{i}" for i, node in enumerate(digraph.nodes)}
    lines = ["flowchart LR"]
    lines += [f'  {index[n]}["{d["name"]}"]' for n, d in digraph.nodes(data=True)]
    lines += [
        f"  {index[a]} {'-->' if d['kind'] == 'value' else '-.->'} {index[b]}"
        for a, b, d in digraph.edges(data=True)
    ]
    return "\n".join(lines)


_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>cpbuild graph</title></head>
<body>
<pre class="mermaid">
{graph}
</pre>
<script type="module">
  import mermaid from "https://cdn.jsdelivr.net/npm/mermaid@11/dist/mermaid.esm.min.mjs";
  mermaid.initialize({ startOnLoad: true });
</script>
</body></html>
"""
