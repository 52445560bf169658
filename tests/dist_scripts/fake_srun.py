"""A stand-in for Slurm's ``srun`` in tests: starts SLURM_NNODES tasks of the command (one per
"node", as ``--ntasks-per-node=1`` does) with the variables Slurm gives each task, waits for all."""
import os
import subprocess
import sys


def main() -> int:
    nodes = int(os.environ["SLURM_NNODES"])
    procs = []
    for task in range(nodes):
        env = dict(os.environ, SLURM_NTASKS=str(nodes), SLURM_PROCID=str(task), SLURM_NODEID=str(task),
                   SLURM_LOCALID="0", SLURM_STEP_ID="0")
        procs.append(subprocess.Popen(sys.argv[1:], env=env))
    return max(p.wait() for p in procs)


if __name__ == "__main__":
    sys.exit(main())
