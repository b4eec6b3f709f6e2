"""`feddat pretrain`: the offline foundation backbone's trainer (train.py; DESIGN §8a).

A regular package (not a namespace one) so that the architecture contracts see it
(pyproject.toml [tool.importlinter]).
"""
