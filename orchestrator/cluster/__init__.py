"""Running a study on a cluster that is not Ray's own launcher: Slurm (`grokscale slurm`).

`slurm` writes and submits an sbatch script built from the `slurm.sbatch` template beside it;
`join` is what that script runs to wait until every node's Ray has joined the head.
"""
