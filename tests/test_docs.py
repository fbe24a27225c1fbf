"""Every ```python block of every guide in docs/ runs, so the guides cannot rot.

The blocks of one guide run in order in one fresh interpreter (later blocks may use
names from earlier ones), from the repository root. A snippet that is not meant to
run belongs in a ```text (or ```sh) block.
"""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
GUIDES = sorted((ROOT / "docs").glob("*.md"))
PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def python_blocks(text: str) -> list[str]:
    return PYTHON_BLOCK.findall(text)


def test_block_extraction():
    text = "intro\n```python\na = 1\n```\n```sh\nls\n```\n```python\nb = a\n\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = a\n\n"]


def test_the_guides_this_suite_knows_are_there():
    assert {"loop.md", "transports.md", "websocket.md", "multicast.md", "fix.md", "tuning.md",
            "metrics.md"} <= {g.name for g in GUIDES}


@pytest.mark.parametrize("guide", GUIDES, ids=[g.name for g in GUIDES])
def test_guide_snippets_run(guide):
    blocks = python_blocks(guide.read_text())
    # One script; each block marked so a traceback names the block that failed.
    script = "\n".join(f"# --- {guide.name} block {i + 1}\n{code}" for i, code in enumerate(blocks))
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, f"{guide.name}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
