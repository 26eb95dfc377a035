"""One worker host for the Temporal tests: ``python -m tests.temporal.host ADDRESS QUEUE NAME``.

NAME reaches the activities (through the environment the pool's subprocesses inherit) so that
a result tells which host ran it.
"""

from __future__ import annotations

import asyncio
import os
import sys

if __name__ == "__main__":
    address, queue, name = sys.argv[1:4]
    os.environ["ACTIVITYPOOL_TEST_HOST"] = name
    from pool.temporal import serve_host

    asyncio.run(
        serve_host(
            address=address,
            namespace="default",
            task_queue=queue,
            workers=2,
            modules=["tests.temporal.activities"],
        )
    )
    # temporalio's native threads can crash the interpreter's teardown (temporalio/sdk-python
    # #300), which would turn a clean stop into SIGABRT: the host has stopped, so leave now.
    sys.stderr.flush()
    os._exit(0)
