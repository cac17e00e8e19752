"""A long-lived process with 8 simulated CPU devices that runs test scenarios on request: one per test run (per
xdist worker that asks for it; the tests that use it share one xdist group), so JAX and the library are imported
once and every mesh scenario (1, 2, 4 or 8 devices) runs in it, instead of a fresh interpreter per scenario.
Started by the `eight_devices` fixture (tests/conftest.py) with XLA_FLAGS and the persistent compilation cache set.

Protocol: a request is one JSON line on stdin, {"call": "module:function", "args": [...]} (the module importable
from tests/); the reply is one JSON line on stdout, {"result": <JSON>} or {"error": "<traceback>"}. Anything a
scenario prints goes to stderr (the fixture's log file), so stdout carries replies only.
"""

import importlib
import json
import sys
import traceback


def main():
    replies = sys.stdout
    sys.stdout = sys.stderr
    import jax

    assert jax.device_count() == 8, jax.device_count()
    replies.write(json.dumps({"result": "ready"}) + "\n")
    replies.flush()
    for line in sys.stdin:
        request = json.loads(line)
        module, function = request["call"].split(":")
        try:
            reply = {"result": getattr(importlib.import_module(module), function)(*request["args"])}
        except BaseException:  # noqa: BLE001 - every failure goes back to the test that asked
            reply = {"error": traceback.format_exc()}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
