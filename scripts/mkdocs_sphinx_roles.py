"""A Griffe extension for the docs site (mkdocs.yml): msfer's docstrings cross-reference with Sphinx roles
(:class:`X`, :func:`Y`), which mkdocstrings would print as they are; the API reference shows them as code."""
import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|data|mod|attr|exc|obj):`~?([^`]+)`")


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(r"`\1`", obj.docstring.value)
