"""mkdocs hook: our docstrings use Sphinx roles (:class:`X`) and ``::`` literal-block markers,
which mkdocstrings prints as they are; show the code name alone, and a single colon."""

import re

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):(?=<code)")


def on_page_content(html, **kwargs):
    html = ROLE.sub("", html)
    return re.sub(r"(\w)::</p>", r"\1:</p>", html)
