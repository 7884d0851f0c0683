"""Examples in the docs run: every ```python block of these pages, in order, in one namespace per page
(a block right after `<!-- skip -->` is not run)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", "docs/python-api.md"]
BLOCK = re.compile(r"(<!-- skip -->\s*)?```python\n(.*?)```", re.S)


def python_blocks(page: Path) -> list[str]:
    return [code for skip, code in BLOCK.findall(page.read_text()) if not skip]


@pytest.mark.parametrize("page", PAGES)
def test_examples_run(page, dit_folder, dit_prior_folder, sd_folder, capsys):
    blocks = python_blocks(ROOT / page)
    namespace = {"MODEL_DIR": str(dit_folder), "PRIOR_DIR": str(dit_prior_folder), "SD_DIR": str(sd_folder)}
    for code in blocks:
        exec(compile(code, f"{page} example", "exec"), namespace)


def test_docs_link_to_existing_pages():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} links to missing {target}"
