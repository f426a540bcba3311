"""xmodal_jax: cross-modal (image <-> text) learning in JAX/Flax, from a laptop CPU to a TPU pod."""
import pathlib

from setuptools import find_packages, setup

_HERE = pathlib.Path(__file__).parent
_REQUIREMENTS = [line.split("#")[0].strip() for line in (_HERE / "requirements.txt").read_text().splitlines()
                 if line.split("#")[0].strip()]

setup(
    name="xmodal_jax",
    version="0.1.0",
    description="Cross-modal (image <-> text) learning in JAX/Flax: VSE++, and more systems on one trainer.",
    long_description=(_HERE / "README.md").read_text() if (_HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["xmodal_jax", "xmodal_jax.*"]),
    package_data={"xmodal_jax.serving": ["web/*.html", "web/*.js", "web/*.css"]},  # the search page
    python_requires=">=3.11",
    install_requires=_REQUIREMENTS,
    extras_require={"test": ["pytest", "pytest-xdist", "httpx==0.28.1", "selenium==4.50.0"],  # httpx: TestClient
                    "docs": ["matplotlib==3.11.2"]},  # docs/figures/make_figures.py (training curves)
    entry_points={"console_scripts": ["xmodal=xmodal_jax.main:run"]},
)
