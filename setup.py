"""Build hook: ship the repository's top-level `model_cards/` (the card template and per-data-set card data, edited
there) inside the package as `hf_vit/hub/model_cards/`, so that `hf-vit card` and `hf-vit push` work from an installed
wheel. Everything else is declared in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithModelCards(build_py):
    def run(self):
        super().run()
        source = Path(__file__).resolve().parent / "model_cards"
        target = Path(self.build_lib) / "hf_vit" / "hub" / "model_cards"
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(source.iterdir()):
            if path.suffix in (".md", ".yaml"):
                shutil.copy2(path, target / path.name)


setup(cmdclass={"build_py": BuildWithModelCards})
