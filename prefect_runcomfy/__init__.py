"""prefect-runcomfy: RunComfy's InfiniteTalk model as Prefect tasks, blocks and flows.

```python
from prefect_runcomfy import RunComfyCredentials, RunComfyClient, InfiniteTalkInput
```

The names below are imported when first used: the `prefect-runcomfy` command starts without
importing Prefect or pandas (`--help`, `validate` and `status` need neither).
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from prefect_runcomfy._version import __version__

if TYPE_CHECKING:
    from prefect_runcomfy.api.client import RunComfyClient
    from prefect_runcomfy.api.models import InfiniteTalkInput, RequestStatus
    from prefect_runcomfy.blocks import RunComfyCredentials
    from prefect_runcomfy.flows import (
        Concurrency,
        MediaOptions,
        ShardWatching,
        Spending,
        Waiting,
        collect_outstanding_requests,
        generate_talking_videos,
        generate_talking_videos_sharded,
    )

_WHERE = {
    "RunComfyClient": "prefect_runcomfy.api.client",
    "InfiniteTalkInput": "prefect_runcomfy.api.models",
    "RequestStatus": "prefect_runcomfy.api.models",
    "RunComfyCredentials": "prefect_runcomfy.blocks",
    **dict.fromkeys(
        (
            "Concurrency",
            "MediaOptions",
            "ShardWatching",
            "Spending",
            "Waiting",
            "collect_outstanding_requests",
            "generate_talking_videos",
            "generate_talking_videos_sharded",
        ),
        "prefect_runcomfy.flows",
    ),
}


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first asked for (PEP 562)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_runcomfy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names too (`inspect.getmembers`, as `prefect block register -m` uses)."""
    return sorted({*globals(), *_WHERE})


# Prefect imports this package as a collection (entry point `prefect.collections`) to find
# its block types by slug: then the block class must exist, so it is defined at once.
if "prefect" in sys.modules:
    from prefect_runcomfy import blocks as _blocks  # noqa: F401

__all__ = [
    "Concurrency",
    "InfiniteTalkInput",
    "MediaOptions",
    "RequestStatus",
    "RunComfyClient",
    "RunComfyCredentials",
    "ShardWatching",
    "Spending",
    "Waiting",
    "__version__",
    "collect_outstanding_requests",
    "generate_talking_videos",
    "generate_talking_videos_sharded",
]
