"""Run another test script with this rank's stderr in a file of its own.

``mpiexec ... python hosts_stderr.py DIR SCRIPT [ARGS...]``: rank ``r``
writes its stderr to ``DIR/rank{r}.stderr`` instead of the launcher's, then
runs ``SCRIPT`` (a path, or a name under tests/mpi) as ``__main__``. A
host cut off from the launcher cannot forward its output; the shared
filesystem still shows what each rank said.
"""

import os
import runpy
import sys

out_dir, script, *args = sys.argv[1:]
rank = os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
fd = os.open(os.path.join(out_dir, f"rank{rank}.stderr"),
             os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.dup2(fd, 2)
os.close(fd)
if not os.path.isabs(script):
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), script)
sys.argv = [script, *args]
sys.path[0] = os.path.dirname(script)
runpy.run_path(script, run_name="__main__")
