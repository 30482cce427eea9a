"""Shared test set-up: Keras on torch, and a launcher for real MPI ranks."""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")
# Tests assert numbers, not speed: one compute thread per process keeps
# oversubscribed runs (3-4 ranks on 2 cores) quick and deterministic.
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
