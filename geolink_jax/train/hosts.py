"""Coordination of the processes (hosts) of one multi-host run."""
import jax
import orbax.checkpoint as ocp


def barrier(name, timeout_s=1800):
    """Block until every process has reached the barrier `name` (unique per run). No-op on one process.

    A coordination-service barrier, not a device collective: host work of any length may precede it on one host
    (preprocessing, compiling, a compilation-cache miss), whereas a first CPU (gloo) collective gives its peers only
    30 s to join."""
    if jax.process_count() > 1:
        ocp.multihost.sync_global_processes(name, timeout=timeout_s, processes=set(range(jax.process_count())))
