"""crashfs: a FUSE file system for power-loss tests that keeps what a disk would hold after
a power cut apart from what the page cache holds (model.py), and writes either out as an
image on request (server.py, harness.py)."""
