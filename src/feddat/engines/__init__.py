"""Engines run the rounds of a method. `rounds` owns a round (which clients train, when and
whom to evaluate, the records and the summary) and both engines drive it: `embedded` (one
process, clients in turn; `runner` runs a whole `feddat run` on it) and `flower` (Flower's
SuperLink and SuperNodes). They share `rundir` (the run directory's files) and `state`
(private state on disk, checkpoints), and never import each other."""
