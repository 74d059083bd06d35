"""prefect-runcomfy: RunComfy's InfiniteTalk model as Prefect tasks, blocks and flows.

```python
from prefect_runcomfy import RunComfyCredentials, RunComfyClient, InfiniteTalkInput
```
"""

from prefect_runcomfy._version import __version__
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
