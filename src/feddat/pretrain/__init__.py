"""`feddat pretrain`: the offline foundation backbone's trainer (train.py; docs/design.md §8a).

A regular package (not a namespace one) so that the architecture contracts see it
(pyproject.toml [tool.importlinter]).
"""
