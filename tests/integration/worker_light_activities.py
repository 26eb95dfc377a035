"""An activity for tests/integration/test_worker_light.py: a module that imports nothing heavy.

It must stay this small. The worker imports it (preload), so whatever it imported would show up
in the worker's ``sys.modules`` and hide what the worker itself loads. The annotations of
``typed_loaded_modules`` are checked by the caller (arguments before dispatch, the result when it
comes back), never by the worker.
"""

import sys

from sdk import activity


@activity
def loaded_modules():
    return sorted(sys.modules)


@activity
def typed_loaded_modules(x: int) -> list[str]:
    return sorted(sys.modules)
