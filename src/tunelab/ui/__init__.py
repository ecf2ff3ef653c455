"""`tunelab ui`: a local web UI over the Python API (tunelab/api.py); it holds no training or file logic."""
