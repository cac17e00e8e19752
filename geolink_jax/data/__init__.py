"""Family-free data I/O: record format, ArrayRecord shards, the image rule, job outputs, the per-item job and the
grain chain."""
