"""Lets focus-validator 2.2.1 (PyPI) load on Python 3.10/3.11: run by scripts/setup-python with
the validator venv's interpreter. The package declares Python >= 3.12 for one expression, an
f-string whose expression holds a backslash (PEP 701, 3.12 syntax); it is rewritten here to the
same value without the f-string. Nothing else in the validator is changed. On 3.12+ it does
nothing."""
import os
import sys

if sys.version_info >= (3, 12):
    sys.exit(0)

import importlib.util

spec = importlib.util.find_spec("focus_validator")
path = os.path.join(
    os.path.dirname(spec.origin), "config_objects", "focus_to_duckdb_converter.py"
)
source = open(path, encoding="utf-8").read()
pep701 = """f"'{k.replace('\\"', '\\"\\"')}'\""""
same_value = """"'" + k.replace('"', '""') + "'\""""
if pep701 in source:
    open(path, "w", encoding="utf-8").write(source.replace(pep701, same_value))
elif same_value not in source:
    sys.exit(f"{path}: the 3.12-only expression was not found; is this focus-validator 2.2.1?")
