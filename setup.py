"""Build hook: ship the dataset card templates with the package.

``datasets_cards/`` stays at the repository root (one source of truth, where the design puts it); at build time
its ``*.md`` files are copied into the built package as ``dermtrl/templates/datasets_cards/``, where
:mod:`dermtrl.data.cards` finds them with :mod:`importlib.resources` in a wheel install. All other metadata is
in ``pyproject.toml``.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CARDS = Path(__file__).resolve().parent / "datasets_cards"


class BuildWithCards(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads datasets_cards/ in place
            return
        target = Path(self.build_lib) / "dermtrl" / "templates" / "datasets_cards"
        target.mkdir(parents=True, exist_ok=True)
        templates = sorted(CARDS.glob("*.md"))
        if not templates:
            raise RuntimeError(f"{CARDS}: no card templates to package")
        for src in templates:
            self.copy_file(str(src), str(target / src.name))


setup(cmdclass={"build_py": BuildWithCards})
