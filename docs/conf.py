import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "txhyperswarm"
author = "the txhyperswarm developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx"]
intersphinx_mapping = {}
autodoc_member_order = "bysource"
autodoc_mock_imports = []
exclude_patterns = ["_build", "bench_*.rst"]
html_theme = "alabaster"
nitpicky = False
suppress_warnings = ["ref.python"]
