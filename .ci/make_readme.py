"""README.md from nbs/index.ipynb (what `nbdev_readme` does, without Quarto, which cannot be installed offline).

    python .ci/make_readme.py          # write README.md
    python .ci/make_readme.py --check  # exit 1 if README.md is not current
Markdown cells are copied; code cells become ```python blocks (```sh for `!` shell lines; none with `#| echo: false`)
with their text outputs (Markdown outputs as Markdown, live widgets left out); cells marked
`#| hide`, `#| export`-only cells and the `default_exp` cell are left out, as nbdev does.
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = "<!-- Generated from nbs/index.ipynb by .ci/make_readme.py: edit the notebook, not this file. -->\n\n"


def directives(src: str) -> set[str]:
    return {line[3:].strip().split()[0] for line in src.splitlines() if line.startswith("#| ") and line[3:].strip()}


def relink(md: str) -> str:
    "Relative links and images of nbs/index.ipynb point into nbs/ from the README at the top level."
    return re.sub(r"\]\((?![a-z]+:|#|/)([^)]+)\)", r"](nbs/\1)", md)


def render(nb: dict) -> str:
    parts = []
    for cell in nb["cells"]:
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "markdown":
            parts.append(relink(src.strip()))
            continue
        d = directives(src)
        if d & {"hide", "default_exp", "export", "exporti"}:
            continue
        code = "\n".join(line for line in src.splitlines() if not line.startswith("#| "))
        if code.lstrip().startswith("!"):           # a shell command: shown as one, without the `!`
            parts.append("```sh\n" + re.sub(r"^!", "", code.strip(), flags=re.M) + "\n```")
        elif "echo" not in {line[3:].split(":")[0].strip() for line in src.splitlines() if line.startswith("#| ")}:
            parts.append(f"```python\n{code.strip()}\n```")   # `#| echo: false`: the output alone
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data: continue   # a live widget: no text to show
            if "text/markdown" in data:
                md = data["text/markdown"]
                parts.append(relink("".join(md) if isinstance(md, list) else md).strip())
                continue
            text = out.get("text") or data.get("text/plain")
            if text:
                text = ("".join(text) if isinstance(text, list) else text).replace("\r\n", "\n")   # a shell's line ends
                parts.append("    " + text.rstrip().replace("\n", "\n    "))
    return HEADER + "\n\n".join(p for p in parts if p) + "\n"


def main() -> int:
    nb = json.loads((ROOT / "nbs" / "index.ipynb").read_text(encoding="utf-8"))
    text, readme = render(nb), ROOT / "README.md"
    if "--check" in sys.argv:
        if not readme.exists() or readme.read_text(encoding="utf-8") != text:
            print("README.md is not current with nbs/index.ipynb: run `python .ci/make_readme.py` and commit.")
            return 1
        print("README.md is current.")
        return 0
    readme.write_text(text, encoding="utf-8")
    print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
