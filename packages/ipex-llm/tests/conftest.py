import os
import sys

# llm_families.py (tiny models of every family) is shared by these tests and the benchmarks.
sys.path.insert(0, os.path.dirname(__file__))
