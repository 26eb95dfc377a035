"""An activity for tests/integration/test_worker_light.py: a module that imports nothing heavy.

It must stay this small. The worker imports it (preload), so whatever it imported would show up
in the worker's ``sys.modules`` and hide what the worker itself loads. No annotations on the
activity either: a return annotation makes the worker validate the result with pydantic.
"""

import sys

from sdk import activity


@activity
def loaded_modules():
    return sorted(sys.modules)
