import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # optimize_models.py, shared with benchmarks/bench_optimize.py
