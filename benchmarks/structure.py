"""The package's shape, by AST: lines per module (those over 400), the longest functions (those over 60 lines), the
import graph among invnb's modules and a cycle in it (null: none), the imports of the package root from inside it
(`import invnb`: an arrow to every module `invnb/__init__.py` imports), the arrows that run back up (to a module of a
later notebook), and the notebooks holding a stored figure. Prints one JSON object.

    python benchmarks/structure.py [ROOT=.]
"""
import ast, json, pathlib, sys
root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else '.')
mods = {p.stem: p for p in sorted((root / 'invnb').glob('*.py')) if p.stem not in ('_modidx', '__init__')}
sizes, funcs, graph, roots = {}, [], {}, {}
for m, p in mods.items():
    src = p.read_text(); t = ast.parse(src); sizes[m] = len(src.splitlines())
    for n in ast.walk(t):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)): funcs.append((n.end_lineno - n.lineno + 1, f'{m}.{n.name}'))
    deps = set()
    for n in ast.walk(t):
        if isinstance(n, ast.Import) and any(a.name == 'invnb' for a in n.names): roots[m] = roots.get(m, 0) + 1
        if isinstance(n, ast.ImportFrom):
            if n.level == 1 and n.module: deps.add(n.module.split('.')[0])
            elif n.level == 1: deps.update(a.name for a in n.names)
            elif n.module and n.module.startswith('invnb.'): deps.add(n.module.split('.')[1])
            elif n.module == 'invnb': deps.update(a.name for a in n.names if a.name in mods)
    graph[m] = sorted(d for d in deps if d in mods and d != m)
init = ast.parse((root / 'invnb' / '__init__.py').read_text())
top = sorted({n.module.split('.')[0] for n in ast.walk(init) if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module})
for m in roots: graph[m] = sorted(set(graph[m]) | {d for d in top if d != m})   # `import invnb` runs __init__'s imports
order = {}
for nb in sorted((root / 'nbs').glob('*.ipynb')):
    for c in json.loads(nb.read_text())['cells'][:3]:
        for line in ''.join(c['source']).splitlines():
            if line.startswith('#| default_exp'): order[line.split()[-1]] = nb.stem
back = sorted(f'{m} -> {d}' for m, ds in graph.items() for d in ds if m in order and d in order and order[d] > order[m])


def cycle():
    state = {}
    def visit(u, path):
        state[u] = 1
        for v in graph[u]:
            if state.get(v) == 1: return (path + [u])[(path + [u]).index(v):] + [v]   # the cycle alone, v to v
            if not state.get(v) and (c := visit(v, path + [u])): return c
        state[u] = 2
    for u in graph:
        if not state.get(u) and (c := visit(u, [])): return c
nbs = sorted([*(root / 'nbs').glob('*.ipynb'), *(root / 'nbs/tutorials').glob('*.ipynb')])
fig = [p.stem for p in nbs if any('image/png' in o.get('data', {}) for c in json.loads(p.read_text())['cells']
                                  if c['cell_type'] == 'code' for o in c.get('outputs', []))]
funcs.sort(reverse=True)
print(json.dumps({'modules': len(mods), 'lines': sizes, 'longest_functions': funcs[:5],
                  'modules_over_400_lines': {m: n for m, n in sizes.items() if n > 400},
                  'functions_over_60_lines': [f for f in funcs if f[0] > 60], 'import_cycle': cycle(),
                  'package_root_imports': roots, 'back_arrows': len(back), 'back_arrow_list': back,
                  'notebooks': len(nbs), 'notebooks_with_figures': len(fig), 'without': [p.stem for p in nbs if p.stem not in fig],
                  'graph': graph}, indent=1))
